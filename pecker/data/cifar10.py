"""``cifar10``: the CIFAR-10 training set (50,000 images, 32 x 32 RGB), python-pickle batches.

Every batch is checked against an md5 table *before* it is unpickled, and unpickling only admits
numpy's array reconstructors. The default table, URL and archive md5 are torchvision's.
"""

from __future__ import annotations

import codecs
import pickle
from pathlib import Path
from typing import Any, BinaryIO, Mapping

import numpy as np

from pecker.data import raw
from pecker.data.raw import RawData, as_uint8, check_labels

DEFAULT_ROOT = Path("data/raw/cifar10")
ARCHIVE = "cifar-10-python.tar.gz"  # the release archive; URL and md5 come from torchvision
BASE_FOLDER = "cifar-10-batches-py"
TRAIN_BATCHES = [f"data_batch_{i}" for i in range(1, 6)]
META_FILE = "batches.meta"


def default_checksums() -> dict[str, str]:
    """torchvision's md5 of each file under ``cifar-10-batches-py`` that we read."""
    from torchvision.datasets import CIFAR10

    table = {name: md5 for name, md5 in CIFAR10.train_list}
    table[CIFAR10.meta["filename"]] = CIFAR10.meta["md5"]
    return table


def _archive() -> tuple[str, str, str]:
    from torchvision.datasets import CIFAR10

    return CIFAR10.url, CIFAR10.filename, CIFAR10.tgz_md5


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickler that can rebuild numpy arrays (and protocol-2 bytes) and nothing else."""

    _reconstruct = np.ndarray(0).__reduce__()[0]  # numpy's private names differ across versions
    _frombuffer = np.zeros(1).__reduce_ex__(5)[0]
    ALLOWED = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
        ("numpy.core.numeric", "_frombuffer"): _frombuffer,
        ("numpy._core.numeric", "_frombuffer"): _frombuffer,
        ("_codecs", "encode"): codecs.encode,
    }

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self.ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refusing to unpickle global {module}.{name}") from None


def _unpickle(fh: BinaryIO) -> Any:
    """Load one (already checksum-verified) CIFAR pickle; byte strings stay bytes."""
    return _ArrayUnpickler(fh, encoding="bytes").load()


def _get(d: Mapping, key: str) -> Any:
    """CIFAR pickles from Python 2 have byte-string keys; accept ``str`` keys too."""
    if key.encode() in d:
        return d[key.encode()]
    return d[key]


def load_cifar10(
    root: str | Path | None = None,
    download: bool = False,
    checksums: Mapping[str, str] | None = None,
    cfg_key: str = "datasets.<name>.data",
) -> RawData:
    """uint8 50000 x 32 x 32 x 3 images and labels 0..9 from ``root/cifar-10-batches-py``."""
    root = Path(root) if root is not None else DEFAULT_ROOT
    table = dict(checksums) if checksums is not None else default_checksums()
    names = TRAIN_BATCHES + [META_FILE]
    unlisted = [n for n in names if n not in table]
    if unlisted:
        raise ValueError(f"cifar10: no md5 given for {unlisted}; refusing to unpickle unverified files")
    folder = raw.ensure_files("cifar10", root, BASE_FOLDER, names, download, ARCHIVE, _archive, cfg_key)
    verified = raw.verify_md5_table(folder, {n: table[n] for n in names})

    with (folder / META_FILE).open("rb") as fh:
        names_raw = _get(_unpickle(fh), "label_names")
    class_names = [n.decode() if isinstance(n, bytes) else str(n) for n in names_raw]
    images, labels = [], []
    for name in TRAIN_BATCHES:
        with (folder / name).open("rb") as fh:
            batch = _unpickle(fh)
        data = as_uint8(np.asarray(_get(batch, "data")), f"cifar10 {name}")
        if data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
            raise ValueError(f"cifar10 {name}: 'data' has shape {data.shape}, expected N x 3072")
        batch_labels = check_labels(_get(batch, "labels"), len(class_names), f"cifar10 {name}")
        if batch_labels.shape[0] != data.shape[0]:
            raise ValueError(f"cifar10 {name}: {batch_labels.shape[0]} labels for {data.shape[0]} images")
        images.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        labels.append(batch_labels)
    checksums_out = {f"{BASE_FOLDER}/{n}": v for n, v in verified.items()}
    return RawData(np.ascontiguousarray(np.concatenate(images)), np.concatenate(labels),
                   class_names, checksums_out)
