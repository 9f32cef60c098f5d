# pecker workflow: data -> teacher -> classifier -> unlearning -> evaluation -> tables/figures.
#
#   snakemake --cores 2                                  embedded default (config/config.yaml), offline
#   snakemake --cores 2 --configfile config/test.yaml    tiny CI run
#   snakemake --cores 8 --profile slurm --configfile config/cifar10.yaml config/stl10.yaml
#
# Every rule calls the `pecker` CLI; each step can be run by hand with the same command.
from snakemake.utils import min_version

min_version("9.0")


if not config:

    configfile: "config/config.yaml"


include: "rules/common.smk"
include: "rules/assets.smk"
include: "rules/data.smk"
include: "rules/teacher.smk"
include: "rules/classifier.smk"
include: "rules/unlearn.smk"
include: "rules/evaluate.smk"
include: "rules/report.smk"


rule all:
    default_target: True
    input:
        all_targets(),
