"""What every raw-source loader returns, and the checks they share (missing files, checksums)."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Mapping, NamedTuple

import numpy as np

from pecker import io


class RawData(NamedTuple):
    """A raw source at native size: ``images`` uint8 N x H x W x C, ``labels`` int64 in 0..K-1."""

    images: np.ndarray
    labels: np.ndarray
    class_names: list[str]
    checksums: dict[str, str]  # file name (relative to the root) -> "md5:<hex>" / "sha256:<hex>"


class MissingRawDataError(FileNotFoundError):
    """A raw file is absent and cannot (or may not) be downloaded."""


def missing_message(path: Path, source: str, root: Path, archive: str, cfg_key: str) -> str:
    """The fail-fast message for a missing raw file of a downloadable source."""
    return (
        f"{source}: raw file missing: {path}. Either set {cfg_key}.download=true "
        f"(e.g. --set {cfg_key}.download=true) on a machine with network access, or extract "
        f"{archive} under {root} yourself (copy it from a networked machine)."
    )


def ensure_files(
    source: str, root: Path, base_folder: str, names: list[str], download: bool,
    archive_name: str, archive: Callable[[], tuple[str, str, str]], cfg_key: str,
) -> Path:
    """``root/base_folder`` holding ``names``; if allowed, fetch ``archive()`` = (url, filename, md5).

    ``archive`` is only called to download, so offline runs never import torchvision.
    """
    folder = root / base_folder
    missing = [n for n in names if not (folder / n).is_file()]
    if missing and download:
        download_archive(*archive(), root=root)
        missing = [n for n in names if not (folder / n).is_file()]
    if missing:
        raise MissingRawDataError(missing_message(
            folder / missing[0], source, root, f"{archive_name} (it unpacks to {base_folder}/)", cfg_key
        ))
    return folder


def verify_md5_table(root: Path, table: Mapping[str, str]) -> dict[str, str]:
    """Verify each ``root/name`` against its md5 (raises :class:`pecker.io.ChecksumError`)."""
    return {name: "md5:" + io.verify_checksum(root / name, md5, algo="md5") for name, md5 in table.items()}


def sha256_table(root: Path, names: list[str]) -> dict[str, str]:
    return {name: "sha256:" + io.sha256_file(root / name) for name in names}


def download_archive(url: str, filename: str, md5: str, root: Path) -> None:
    """Download ``url`` into ``root``, check the archive's md5 and extract it (torchvision)."""
    from torchvision.datasets.utils import download_and_extract_archive

    download_and_extract_archive(url, download_root=str(root), filename=filename, md5=md5)


def as_uint8(x: np.ndarray, what: str) -> np.ndarray:
    """Exact conversion to uint8: refuse values outside 0..255 or non-integral values."""
    if x.dtype == np.uint8:
        return x
    if x.size and (x.min() < 0 or x.max() > 255 or not np.array_equal(x, np.round(x))):
        raise ValueError(f"{what}: pixel values are not integers in 0..255 "
                         f"(range {x.min()}..{x.max()}, dtype {x.dtype})")
    return x.astype(np.uint8)


def check_labels(labels: np.ndarray, num_classes: int, what: str) -> np.ndarray:
    """int64 labels, all in ``0..num_classes-1``."""
    labels = np.asarray(labels).astype(np.int64).reshape(-1)
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"{what}: labels outside 0..{num_classes - 1} "
                         f"(range {labels.min()}..{labels.max()})")
    return labels
