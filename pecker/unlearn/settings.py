"""Settings of an unlearning run, resolved from the config without importing torch.

Snakemake's parse (through :mod:`pecker.workflow`; on a cluster, once per job) imports this module,
so it depends on the config layer only. The run's config hash is
:func:`pecker.workflow.stage_hash` (stage ``unlearn``).
"""

from __future__ import annotations

from pecker.config import ConfigError

# Settings that do not change the trajectory of a run (excluded from its hash, so a run can be
# extended or re-checkpointed and still resume). Gradient checkpointing trades memory for compute
# and gives the same numbers (tests/test_precision.py).
BOOKKEEPING = ("steps", "checkpoint_every", "keep_states", "log_every", "seeds", "gradient_checkpointing")

# What each method kind is (docs/method.md sections 3-5): "sfd" is the SFD loop (SFD, PECKER, their
# variants, SFD-Two-Stage) and trains a one-step generator; the baselines fine-tune or retrain the
# multi-step DDPM, which the evaluation samples with evaluate.teacher_sampler.
KINDS = ("sfd", "retrain", "sa", "salun", "esd")
MULTI_STEP = ("retrain", "sa", "salun", "esd")
DATA_FREE = {"sfd": True, "retrain": False, "sa": True, "salun": False, "esd": True}
TEXT_KINDS = ("sfd", "esd", "sa")  # what a text dataset (concept forgetting) can run
# Common unlearn settings every kind shares (the rest of the common section is the SFD loop's).
SHARED = ("forget_class", "cover_class", "keep_states", "log_every")


def method_kind(unl_cfg: dict, method: str) -> str:
    """The kind of a configured method (``sfd`` when its entry has no ``kind``)."""
    return ((unl_cfg.get("methods") or {}).get(method) or {}).get("kind") or "sfd"


def method_seeds(unl_cfg: dict, method: str) -> list[int]:
    """A method's seeds: its own ``seeds`` entry, else ``unlearn.seeds``."""
    entry = (unl_cfg.get("methods") or {}).get(method) or {}
    return list(entry.get("seeds") or unl_cfg.get("seeds") or [0])


def method_settings(unl_cfg: dict, method: str, dataset: str = "<dataset>", teacher_cfg: dict | None = None) -> dict:
    """The flat settings of one method: common settings, overridden by ``methods.<method>``, with
    the mask's null entries resolved (kind ``retrain``: the teacher's settings ``teacher_cfg``
    overridden by the method's entry). Raises :class:`ConfigError` naming the missing key."""
    methods = unl_cfg.get("methods") or {}
    if method not in methods:
        raise ConfigError(
            f"config key 'datasets.{dataset}.unlearn.methods.{method}' not found: method {method!r} "
            f"is not configured (configured: {', '.join(sorted(methods)) or 'none'})"
        )
    kind = method_kind(unl_cfg, method)
    where = f"datasets.{dataset}.unlearn"
    if kind != "sfd":  # a baseline: its own entry (schema defaults filled) and the shared keys
        s = {k: unl_cfg[k] for k in SHARED if k in unl_cfg}
        if kind == "retrain":
            if teacher_cfg is None:
                raise ConfigError(f"method {method!r} (kind retrain) needs the teacher section 'datasets.{dataset}.teacher'")
            s.update({k: v for k, v in teacher_cfg.items() if k not in ("source", "file", "sample", "seed")})
        s.update({k: v for k, v in methods[method].items() if k != "seeds"})
        s.update(method=method, kind=kind)
        if s["forget_class"] == s["cover_class"]:
            raise ConfigError(f"config key '{where}.cover_class': must differ from forget_class ({s['forget_class']})")
        return s
    s = {k: v for k, v in unl_cfg.items() if k not in ("methods", "seeds")}
    s.update({k: v for k, v in methods[method].items() if k != "seeds"})
    s["method"] = method
    if s.get("forget_batch_size") is None:
        s["forget_batch_size"] = s["batch_size"]
    mask = dict(s.get("mask") or {"enabled": False})
    for key in ("t_min", "t_max"):
        if mask.get(key) is None:
            mask[key] = s[key]
    if mask.get("batch_size") is None:
        mask["batch_size"] = s["forget_batch_size"]
    s["mask"] = mask
    init = s.get("init_from")
    if init is not None:
        if init == method or init not in methods:
            raise ConfigError(f"config key '{where}.methods.{method}.init_from': {init!r} is not another configured method")
        if method_kind(unl_cfg, init) != "sfd" or (methods[init] or {}).get("init_from"):
            raise ConfigError(f"config key '{where}.methods.{method}.init_from': {init!r} must be a one-stage "
                              "method of kind sfd (stage 1 of SFD-Two-Stage)")
    if s.get("stage2_teacher") is not None and init is None:
        raise ConfigError(f"config key '{where}.methods.{method}.stage2_teacher': only meaningful with init_from "
                          "(stage 2 of SFD-Two-Stage)")
    for lo, hi, pre in ((s["t_min"], s["t_max"], where), (mask["t_min"], mask["t_max"], f"{where}.methods.{method}.mask")):
        if not lo < hi:
            raise ConfigError(f"config key '{pre}.t_min': {lo} must be smaller than t_max ({hi})")
    if s["forget_class"] == s["cover_class"]:
        raise ConfigError(f"config key '{where}.cover_class': must differ from forget_class ({s['forget_class']})")
    return s
