"""Provenance records attached to every result file.

A record says which code (git commit, dirty flag), which config (hash of the sections the step
depends on), which software (package versions) and which machine produced a result, with seeds,
wall-clock and peak memory.
"""

from __future__ import annotations

import importlib.metadata
import platform
import resource
import socket
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from pecker.config import REPO_ROOT

TRACKED_PACKAGES = (
    "pecker", "torch", "torchvision", "diffusers", "numpy", "safetensors", "snakemake",
    "torch-fidelity", "clean-fid", "scikit-learn", "pandas", "mlxtend",
)


# Paths whose changes make a result's code "dirty" (relative to the directory git runs in).
TRACKED_PATHS = ("pecker", "rules", "Snakefile", "config")


def _git(root: Path, *args: str) -> str:
    """stdout of ``git -C root ARGS`` ('' when git fails there); raises OSError without a git binary."""
    return subprocess.run(
        ["git", *args], cwd=root, capture_output=True, text=True, timeout=20
    ).stdout.strip()


def _toplevel(path: Path) -> Path | None:
    top = _git(path, "rev-parse", "--show-toplevel")
    return Path(top).resolve() if top else None


def git_state(root: Path | None = None) -> dict:
    """The git commit and dirty flag of the code that runs.

    With ``root`` given, that checkout. Otherwise the source tree holding this package when it runs
    from one (a clone, an editable install). An installed copy (``pip install .``) has no commit of
    its own: then the checkout of the working directory is recorded, if there is one, with
    ``checkout`` naming it and ``note`` saying the installed code is not necessarily that commit;
    outside any checkout ``commit`` and ``dirty`` are None and ``note`` says so. Never raises.
    """
    out: dict = {}
    try:
        if root is None:
            if (REPO_ROOT / "pyproject.toml").is_file() and _toplevel(REPO_ROOT):  # a source tree
                root = REPO_ROOT
            else:
                cwd = Path.cwd()
                root = _toplevel(cwd)
                if root is None:
                    return {"commit": None, "dirty": None,
                            "note": f"not a git checkout: pecker is installed at {Path(__file__).resolve().parent} "
                                    f"and the working directory {cwd} is outside any git checkout"}
                out = {"checkout": str(root),
                       "note": f"pecker is an installed copy ({Path(__file__).resolve().parent}); "
                               "commit and dirty are those of the working directory's checkout"}
        commit = _git(root, "rev-parse", "HEAD") or None
        dirty = bool(_git(root, "status", "--porcelain", "--untracked-files=no", "--", *TRACKED_PATHS)) if commit else None
    except (OSError, subprocess.SubprocessError) as exc:
        return {"commit": None, "dirty": None, "note": f"git unavailable: {exc}"}
    if commit is None:
        out.setdefault("note", f"not a git checkout (or no commit yet): {root}")
    return {"commit": commit, "dirty": dirty, **out}


def package_versions(names=TRACKED_PACKAGES) -> dict:
    out = {}
    for n in names:
        try:
            out[n] = importlib.metadata.version(n)
        except importlib.metadata.PackageNotFoundError:
            out[n] = None
    return out


def peak_memory() -> dict:
    rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    out = {"cpu_peak_rss_mb": round(rss_kb / 1024, 1)}
    if torch.cuda.is_available():
        out["cuda_peak_allocated_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return out


def device_info() -> dict:
    info = {
        "host": socket.gethostname(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.is_available(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


class Recorder:
    """Measure one step: ``rec = Recorder(...)``; ... ; ``rec.finish(extra)`` -> provenance dict."""

    def __init__(self, step: str, config_hash: str, seeds: dict | None = None, **extra):
        self.step = step
        self.config_hash = config_hash
        self.seeds = seeds or {}
        self.extra = extra
        self.t0 = time.perf_counter()
        self.started = datetime.now(timezone.utc).isoformat(timespec="seconds")

    def finish(self, **extra) -> dict:
        return {
            "step": self.step,
            "git": git_state(),
            "config_hash": self.config_hash,
            "seeds": self.seeds,
            "packages": package_versions(),
            "device": device_info(),
            "started_utc": self.started,
            "finished_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "wall_clock_s": round(time.perf_counter() - self.t0, 3),
            "memory": peak_memory(),
            "argv": sys.argv,
            **self.extra,
            **extra,
        }
