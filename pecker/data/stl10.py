"""``stl10``: STL-10 train + test (13,000 labelled images, 96 x 96 RGB) from the binary release.

``*_X.bin`` holds uint8 images as N x 3 x 96 x 96 in column-major order (each channel is stored
W-major, i.e. transposed); ``*_y.bin`` holds labels 1..10. Files are md5-checked before reading;
the default table, URL and archive md5 are torchvision's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np

from pecker import io
from pecker.data import raw
from pecker.data.raw import RawData, check_labels

DEFAULT_ROOT = Path("data/raw/stl10")
ARCHIVE = "stl10_binary.tar.gz"  # the release archive; URL and md5 come from torchvision
BASE_FOLDER = "stl10_binary"
SPLITS = ("train", "test")
CLASS_NAMES_FILE = "class_names.txt"
SIZE = 96


def default_checksums() -> dict[str, str]:
    """torchvision's md5 of each labelled-split file (the unlabelled split is not used)."""
    from torchvision.datasets import STL10

    return {name: md5 for name, md5 in STL10.train_list + STL10.test_list if not name.startswith("unlabeled")}


def _archive() -> tuple[str, str, str]:
    from torchvision.datasets import STL10

    return STL10.url, STL10.filename, STL10.tgz_md5


def decode_images(buf: np.ndarray) -> np.ndarray:
    """Raw ``*_X.bin`` bytes -> uint8 N x H x W x 3, the right way up."""
    per_image = 3 * SIZE * SIZE
    if buf.size % per_image:
        raise ValueError(f"stl10: {buf.size} bytes is not a whole number of {SIZE}x{SIZE} RGB images")
    # stored as (N, C, W, H): move to (N, H, W, C)
    return np.ascontiguousarray(buf.reshape(-1, 3, SIZE, SIZE).transpose(0, 3, 2, 1))



def load_stl10(
    root: str | Path | None = None,
    download: bool = False,
    checksums: Mapping[str, str] | None = None,
    cfg_key: str = "datasets.<name>.data",
) -> RawData:
    """uint8 13000 x 96 x 96 x 3 images (train then test) and labels 0..9."""
    root = Path(root) if root is not None else DEFAULT_ROOT
    table = dict(checksums) if checksums is not None else default_checksums()
    bins = [f"{split}_{part}.bin" for split in SPLITS for part in ("X", "y")]
    unlisted = [n for n in bins if n not in table]
    if unlisted:
        raise ValueError(f"stl10: no md5 given for {unlisted}; refusing to read unverified files")
    folder = raw.ensure_files(
        "stl10", root, BASE_FOLDER, bins + [CLASS_NAMES_FILE], download, ARCHIVE, _archive, cfg_key
    )
    verified = raw.verify_md5_table(folder, {n: table[n] for n in bins})
    verified[CLASS_NAMES_FILE] = "sha256:" + io.sha256_file(folder / CLASS_NAMES_FILE)

    class_names = [ln.strip() for ln in (folder / CLASS_NAMES_FILE).read_text().splitlines() if ln.strip()]
    images, labels = [], []
    for split in SPLITS:
        x = decode_images(np.fromfile(folder / f"{split}_X.bin", dtype=np.uint8))
        y = np.fromfile(folder / f"{split}_y.bin", dtype=np.uint8).astype(np.int64) - 1
        if y.shape[0] != x.shape[0]:
            raise ValueError(f"stl10 {split}: {y.shape[0]} labels for {x.shape[0]} images")
        images.append(x)
        labels.append(check_labels(y, len(class_names), f"stl10 {split}_y.bin (labels 1..10)"))
    checksums_out = {f"{BASE_FOLDER}/{n}": v for n, v in verified.items()}
    return RawData(np.concatenate(images), np.concatenate(labels), class_names, checksums_out)
