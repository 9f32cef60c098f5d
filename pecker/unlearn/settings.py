"""Settings of an unlearning run, resolved from the config without importing torch.

Snakemake's parse (through :mod:`pecker.workflow`; on a cluster, once per job) imports this module,
so it depends on the config layer only. The run's config hash is
:func:`pecker.workflow.stage_hash` (stage ``unlearn``).
"""

from __future__ import annotations

from pecker.config import ConfigError

# Settings that do not change the trajectory of a run (excluded from its hash, so a run can be
# extended or re-checkpointed and still resume).
BOOKKEEPING = ("steps", "checkpoint_every", "keep_states", "log_every")


def method_settings(unl_cfg: dict, method: str, dataset: str = "<dataset>") -> dict:
    """The flat settings of one method: common settings, overridden by ``methods.<method>``, with
    the mask's null entries resolved. Raises :class:`ConfigError` naming the missing key."""
    methods = unl_cfg.get("methods") or {}
    if method not in methods:
        raise ConfigError(
            f"config key 'datasets.{dataset}.unlearn.methods.{method}' not found: method {method!r} "
            f"is not configured (configured: {', '.join(sorted(methods)) or 'none'})"
        )
    s = {k: v for k, v in unl_cfg.items() if k not in ("methods", "seeds")}
    s.update(methods[method])
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
    where = f"datasets.{dataset}.unlearn"
    for lo, hi, pre in ((s["t_min"], s["t_max"], where), (mask["t_min"], mask["t_max"], f"{where}.methods.{method}.mask")):
        if not lo < hi:
            raise ConfigError(f"config key '{pre}.t_min': {lo} must be smaller than t_max ({hi})")
    if s["forget_class"] == s["cover_class"]:
        raise ConfigError(f"config key '{where}.cover_class': must differ from forget_class ({s['forget_class']})")
    return s
