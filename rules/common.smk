# Shared helpers: config validation (before any job runs), paths, stage hashes.
from pathlib import Path

from snakemake.exceptions import WorkflowError

from pecker import config as pcfg

try:
    pcfg.validate(config)
except pcfg.ConfigError as err:
    raise WorkflowError(str(err))

RESULTS = config["results_dir"]
DATA = config["data_dir"]
DATASETS = sorted(config["datasets"])

wildcard_constraints:
    dataset="|".join(DATASETS),


# One resolved config per dataset, rewritten only when its content changes; every rule passes it to
# the CLI, and the hash of the sections a rule depends on is a param, so editing a section reruns
# exactly the rules that depend on it.
RESOLVED = {
    ds: str(pcfg.write_resolved(config, ds, Path(RESULTS) / ds / "config.yaml"))
    for ds in DATASETS
}


def resolved_config(wildcards):
    return RESOLVED[wildcards.dataset]


def stage_hash(stage):
    return lambda wildcards: pcfg.stage_hash(config, wildcards.dataset, stage)


def all_targets():
    """Everything `snakemake` builds by default (functions from the stage files, called late)."""
    targets = []
    for ds in DATASETS:
        targets += [
            f"{RESULTS}/{ds}/teacher/samples.png",
            f"{RESULTS}/{ds}/teacher/sample_accuracy.json",
            f"{RESULTS}/{ds}/classifier/model.json",
            *eval_jsons(ds),
        ]
    return targets
