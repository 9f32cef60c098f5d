"""Small builders shared by the tests (tiny datasets and configs; nothing downloads)."""

from __future__ import annotations

import copy
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
