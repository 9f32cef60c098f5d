"""``fashion_mnist_idx``: the Fashion-MNIST training set (60,000 images) from local IDX files.

Default root: where Debian's ``dataset-fashion-mnist`` package installs them
(``apt-get install dataset-fashion-mnist``). Its ``.gz`` files are recompressed, so their md5s
differ from torchvision's table; we record the sha256 of the files we read instead.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pecker.data.idx import find_idx, read_idx
from pecker.data.raw import MissingRawDataError, RawData, check_labels, sha256_table

DEFAULT_ROOT = Path("/usr/share/datasets/fashion-mnist")
IMAGES, LABELS = "train-images-idx3-ubyte", "train-labels-idx1-ubyte"
CLASS_NAMES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]


def load_fashion_mnist_idx(root: str | Path | None = None, cfg_key: str = "datasets.<name>.data") -> RawData:
    """uint8 N x 28 x 28 x 1 images and labels 0..9 from ``root``'s train IDX files."""
    root = Path(root) if root is not None else DEFAULT_ROOT
    paths = {}
    for stem in (IMAGES, LABELS):
        path = find_idx(root, stem)
        if path is None:
            raise MissingRawDataError(
                f"fashion_mnist_idx: raw file missing: {root / stem} (or {stem}.gz). Install it with "
                f"`apt-get install dataset-fashion-mnist` (files land in {DEFAULT_ROOT}), or point "
                f"{cfg_key}.root at a folder holding the Fashion-MNIST IDX files."
            )
        paths[stem] = path
    images, labels = read_idx(paths[IMAGES]), read_idx(paths[LABELS])
    if images.dtype != np.uint8 or images.ndim != 3:
        raise ValueError(f"{paths[IMAGES]}: expected uint8 N x H x W, got {images.dtype} {images.shape}")
    if labels.shape != (images.shape[0],):
        raise ValueError(f"{paths[LABELS]}: {labels.shape} labels for {images.shape[0]} images")
    labels = check_labels(labels, len(CLASS_NAMES), str(paths[LABELS]))
    checksums = sha256_table(root, [p.name for p in paths.values()])
    return RawData(images[..., None], labels, list(CLASS_NAMES), checksums)
