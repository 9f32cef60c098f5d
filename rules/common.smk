# Shared helpers: config validation (before any job runs), paths, stage hashes.
from pathlib import Path

from snakemake.exceptions import WorkflowError

from pecker import config as pcfg
from pecker.unlearn.settings import configured_runs, method_config_hash, method_settings

try:
    pcfg.validate(config)
except pcfg.ConfigError as err:
    raise WorkflowError(str(err))

RESULTS = config["results_dir"]
DATA = config["data_dir"]
DATASETS = sorted(config["datasets"])


wildcard_constraints:
    dataset="|".join(DATASETS),
    method="[A-Za-z0-9][A-Za-z0-9_-]*",
    seed="[0-9]+",


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
    return targets + REPORT_TARGETS


def checkpoint_steps(dataset, method):
    s = method_settings(config["datasets"][dataset]["unlearn"], method, dataset)
    return sorted(set(range(0, s["steps"] + 1, s["checkpoint_every"])) | {s["steps"]})


def eval_jsons(dataset):
    """Every metric JSON of a dataset (teacher, each run's checkpoints and final generator)."""
    out = [f"{RESULTS}/{dataset}/eval/teacher/seed0/final.json"]
    for ds, m, seed in configured_runs(config):
        if ds == dataset:
            out += [
                f"{RESULTS}/{ds}/eval/{m}/seed{seed}/step{st:07d}.json"
                for st in checkpoint_steps(ds, m)
            ]
            out.append(f"{RESULTS}/{ds}/eval/{m}/seed{seed}/final.json")
    return out


def eval_grids(dataset):
    """The Fig. 2 sample grids of a dataset, one per saved checkpoint."""
    return [
        f"{RESULTS}/{ds}/eval/{m}/seed{seed}/step{st:07d}_grid.npz"
        for ds, m, seed in configured_runs(config)
        if ds == dataset
        for st in checkpoint_steps(ds, m)
    ]


def unlearn_steps(wildcards):
    """Length of one unlearning run (sets its runtime request)."""
    ds = pcfg.dataset_config(config, wildcards.dataset)
    return method_settings(ds["unlearn"], wildcards.method, wildcards.dataset)["steps"]
