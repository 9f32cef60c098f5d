"""What the Snakemake workflow needs from the package, torch-free: stage hashes, configured runs,
checkpoint steps. ``rules/common.smk`` imports this module only (it re-exports the config layer).

**One hash per stage.** :func:`stage_hash` is the only function that computes a stage's config hash.
The Snakemake rule's ``hash`` param, the resume guard of a training run and the ``config_hash``
written into each result file are all this number, and ``pecker config hash --stage S`` prints it.

A stage hashes only the config entries its result depends on. Bookkeeping entries that do not change
a run's trajectory (its length, checkpoint and log intervals, how many states are kept) are left
out, so a run can be lengthened or re-checkpointed and still resume; the rules pass them as
separate params so that Snakemake still reruns a job when they change.
"""

from __future__ import annotations

from typing import Any

from pecker.config import ConfigError, asset_manifest, asset_references, config_hash, dataset_config, resolve, resolved_path, store_resolved, text_files, validate  # noqa: F401
from pecker.unlearn.settings import BOOKKEEPING as UNLEARN_BOOKKEEPING
from pecker.unlearn.settings import MULTI_STEP, method_kind, method_seeds, method_settings

TEACHER_BOOKKEEPING = ("steps", "checkpoint_every", "keep_checkpoints", "log_every", "sample")


def _teacher_trajectory(teacher: dict | None) -> dict | None:
    if teacher is None:
        return None
    # baselines_model: the multi-step rows' own UNet (fetch_baselines_teacher), not this teacher's
    return {k: v for k, v in teacher.items() if k not in TEACHER_BOOKKEEPING and k != "baselines_model"}


def _entry(ds: dict, entry: str) -> Any:
    section, _, key = entry.partition(".")
    return (ds.get(section) or {}).get(key) if key else ds.get(section)


# Plain stages: which sections (or "section.key" entries) each depends on.
SECTIONS: dict[str, tuple[str, ...]] = {
    "data": ("data",),
    "classifier": ("data", "classifier"),
    # the teacher's samples (the teacher itself is an input file)
    "sample": ("teacher.sample",),
    # share of the teacher's samples the classifier labels correctly (both are input files)
    "accuracy": ("data", "classifier"),
    # reference features of the retained classes: independent of the networks and run lengths
    "reference": ("data", "unlearn.forget_class", "evaluate"),
    # evaluating a model: the model itself is an input file (its own config travels in its
    # sidecar), so adding an unlearning variant or lengthening a run re-evaluates only that run
    "evaluate": ("data", "classifier", "unlearn.forget_class", "unlearn.cover_class", "evaluate"),
}
STAGES = (*SECTIONS, "teacher", "unlearn")


def stage_config(ds: dict, stage: str, *, method: str | None = None, seed: int | None = None,
                 dataset: str = "<dataset>") -> dict:
    """The part of one dataset's config that ``stage`` depends on.

    ``teacher``: data, network, schedule and the teacher's training settings (not its length,
    checkpointing or sampling). ``unlearn`` (needs ``method`` and ``seed``): data, network, schedule,
    the method's resolved settings without bookkeeping, and the seed; the teacher enters through its
    sha256, which the run checks separately.
    """
    if stage in SECTIONS:
        return {entry: _entry(ds, entry) for entry in SECTIONS[stage]}
    # absent for class datasets (their hashes stay); the prompt files enter through their content
    text = {"text": ds["text"], "text_files": text_files(ds)} if ds.get("text") else {}
    if stage == "teacher":
        return {"data": ds.get("data"), "unet": ds.get("unet"), "diffusion": ds.get("diffusion"),
                "teacher": _teacher_trajectory(ds.get("teacher")), **text}
    if stage == "unlearn":
        if method is None or seed is None:
            raise ConfigError("the unlearn stage hash needs a method and a seed (--method, --seed)")
        if not ds.get("unlearn"):
            raise ConfigError(f"config key 'datasets.{dataset}.unlearn' is missing")
        s = method_settings(ds["unlearn"], method, dataset, ds.get("teacher"))
        skip = UNLEARN_BOOKKEEPING + (TEACHER_BOOKKEEPING if s.get("kind") == "retrain" else ())
        out = {"data": ds.get("data"), "unet": ds.get("unet"), "diffusion": ds.get("diffusion"),
               "unlearn": {k: v for k, v in s.items() if k not in skip}, "seed": int(seed), **text}
        if s.get("init_from"):  # stage 2 of SFD-Two-Stage: stage 1's generator enters through its sha256
            out["init_from"] = s["init_from"]
        return out
    raise ConfigError(f"unknown stage {stage!r} (one of {', '.join(STAGES)})")


def ds_stage_hash(ds: dict, stage: str, **kw) -> str:
    """:func:`stage_hash` from one dataset's section (what the trainers hold)."""
    return config_hash(stage_config(ds, stage, **kw))


def stage_hash(cfg: dict, dataset: str, stage: str, *, method: str | None = None, seed: int | None = None) -> str:
    """The config hash of ``stage`` for ``dataset`` (and ``method`` / ``seed`` for ``unlearn``)."""
    return ds_stage_hash(dataset_config(cfg, dataset), stage, method=method, seed=seed, dataset=dataset)


# ----------------------------------------------------------------------------- runs and targets


def configured_runs(cfg: dict, kinds: tuple[str, ...] | None = None) -> list[tuple[str, str, int]]:
    """``(dataset, method, seed)`` of every configured unlearning run (of ``kinds`` only, if given)."""
    return [(name, m, seed) for name, ds in sorted(cfg["datasets"].items()) if ds.get("unlearn")
            for m in ds["unlearn"]["methods"] if kinds is None or method_kind(ds["unlearn"], m) in kinds
            for seed in method_seeds(ds["unlearn"], m)]


def methods_of_kinds(cfg: dict, kinds: tuple[str, ...]) -> list[str]:
    """Names of the configured methods of ``kinds``, over all datasets (a rule's wildcard set).

    Raises :class:`ConfigError` when one name is a one-step method in one dataset and a multi-step
    baseline in another (the two write different files)."""
    seen: dict[str, str] = {}
    for name, ds in sorted(cfg["datasets"].items()):
        for m in (ds.get("unlearn") or {}).get("methods") or {}:
            k = method_kind(ds["unlearn"], m)
            if m in seen and (seen[m] in MULTI_STEP) != (k in MULTI_STEP):
                raise ConfigError(f"config key 'datasets.{name}.unlearn.methods.{m}': kind {k!r} here, {seen[m]!r} "
                                  "in another dataset; give the methods different names")
            seen[m] = k
    return sorted(m for m, k in seen.items() if k in kinds)


def unlearn_settings(cfg: dict, dataset: str, method: str) -> dict:
    ds = dataset_config(cfg, dataset)
    if not ds.get("unlearn"):
        raise ConfigError(f"config key 'datasets.{dataset}.unlearn' is missing")
    return method_settings(ds["unlearn"], method, dataset, ds.get("teacher"))


def checkpoint_steps(cfg: dict, dataset: str, method: str) -> list[int]:
    """Steps at which a run saves its generator (0, every ``checkpoint_every``, and the last)."""
    s = unlearn_settings(cfg, dataset, method)
    return sorted(set(range(0, s["steps"] + 1, s["checkpoint_every"])) | {s["steps"]})


def run_length(cfg: dict, dataset: str, stage: str, method: str | None = None) -> dict:
    """The bookkeeping a stage's hash leaves out (a rule param: changing it reruns the job)."""
    ds = dataset_config(cfg, dataset)
    if stage == "teacher":
        return {k: ds["teacher"].get(k) for k in ("steps", "checkpoint_every")}
    if stage == "unlearn":
        s = unlearn_settings(cfg, dataset, method)
        return {k: s[k] for k in ("steps", "checkpoint_every")}
    raise ConfigError(f"stage {stage!r} has no run length")
