"""Small builders shared by the tests (tiny datasets and configs; nothing downloads)."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from pecker import config as cfgmod
from pecker import io

REPO = Path(__file__).resolve().parents[1]


def tiny_dataset(tmp: Path, n_per_class: int = 8, res: int = 8, channels: int = 1, seed: int = 0) -> Path:
    """A prepared dataset of easy classes: class c brightens row c (c < res) or column c - res."""
    rng = np.random.default_rng(seed)
    imgs, labels = [], []
    for c in range(10):
        for _ in range(n_per_class):
            img = rng.integers(0, 60, (res, res, channels))
            if c < res:
                img[c] += 180
            else:
                img[:, c - res] += 180
            imgs.append(img)
            labels.append(c)
    out = tmp / "data"
    io.save_npz(out / "train.npz", images=np.asarray(imgs, np.uint8), labels=np.asarray(labels, np.int64))
    io.atomic_write_json(out / "meta.json", {"source": "synthetic", "class_names": [str(c) for c in range(10)],
                                              "resolution": res})
    return out


def tiny_config(**teacher) -> dict:
    """The resolved CI config (config/test.yaml) with teacher overrides."""
    cfg = cfgmod.resolve([REPO / "config" / "test.yaml"])
    ds = copy.deepcopy(cfgmod.dataset_config(cfg, "mnist-tiny"))
    ds["unet"].update(base_channels=8, norm_num_groups=4)
    ds["teacher"].update(teacher)
    return ds


def snakemake_cmd(workdir: Path, *args: str) -> list[str]:
    """The Snakemake command line of the tests: this repo's workflow, run in ``workdir``, on 2 cores;
    ``config/test.yaml`` unless ``args`` name other config files."""
    cfg = [] if "--configfile" in args else ["--configfile", str(REPO / "config" / "test.yaml")]
    return [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(workdir), *cfg,
            "--cores", "2", *args]


def snakemake_env() -> dict:
    return dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
                HF_HUB_OFFLINE="1")


def snakemake(workdir: Path, *args: str, check: bool = True, timeout: int = 1800) -> subprocess.CompletedProcess:
    res = subprocess.run(snakemake_cmd(workdir, *args), capture_output=True, text=True, env=snakemake_env(),
                         timeout=timeout)
    if check and res.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{res.stdout[-4000:]}\n{res.stderr[-8000:]}")
    return res


class Planted:
    """A pickle payload that runs ``touch marker`` when unpickled by a plain unpickler (for tests that
    a restricted unpickler refuses it without running it)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))
