"""Read the prepared on-disk format and convert between uint8 images and model range [-1, 1]."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from pecker import io


def load_prepared(data_dir: str | Path) -> tuple[np.ndarray, np.ndarray, dict]:
    """``(images uint8 NHWC, labels int64, meta)`` from a prepared dataset folder."""
    data_dir = Path(data_dir)
    npz, meta_path = data_dir / "train.npz", data_dir / "meta.json"
    for p in (npz, meta_path):
        if not p.is_file():
            raise FileNotFoundError(
                f"prepared dataset file missing: {p} (run `pecker data prepare` or the "
                "Snakemake rule prepare_data first)"
            )
    arrays = io.load_npz(npz)
    images, labels = arrays["images"], arrays["labels"]
    if images.dtype != np.uint8 or images.ndim != 4:
        raise ValueError(f"{npz}: 'images' must be uint8 N x H x W x C, got {images.dtype} {images.shape}")
    if labels.shape != (images.shape[0],):
        raise ValueError(f"{npz}: 'labels' shape {labels.shape} does not match {images.shape[0]} images")
    return images, labels.astype(np.int64), io.read_json(meta_path)


def to_model_range(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 NHWC -> float32 NCHW in [-1, 1]."""
    x = torch.as_tensor(images)
    return x.permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def from_model_range(x: torch.Tensor) -> torch.Tensor:
    """float NCHW in [-1, 1] -> uint8 NHWC (clamped, rounded)."""
    return x.clamp(-1, 1).add(1).mul(127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu()
