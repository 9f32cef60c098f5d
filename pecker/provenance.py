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


def git_state(root: Path = REPO_ROOT) -> dict:
    def run(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=root, capture_output=True, text=True, timeout=20
        ).stdout.strip()

    try:
        commit = run("rev-parse", "HEAD") or None
        dirty = bool(run("status", "--porcelain", "--untracked-files=no", "--", "pecker", "rules", "Snakefile", "config"))
    except (OSError, subprocess.SubprocessError):
        commit, dirty = None, None
    return {"commit": commit, "dirty": dirty}


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
