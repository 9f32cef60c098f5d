"""Classifier architectures and their input pipeline (uint8 images -> normalised tensors).

- ``resnet34``: the paper's UA classifier, torchvision ResNet-34 with a new 10-way head, inputs
  resized to 224 and ImageNet-normalised; ImageNet weights need the network once.
- ``small_cnn``: the embedded substitute, trained from scratch (no pretrained weights offline).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from pecker import io

log = logging.getLogger("pecker.classifier")

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class SmallCNN(nn.Module):
    """Two conv stages (conv-BN-ReLU x2, max-pool), global average pool, linear head."""

    def __init__(self, in_channels: int, num_classes: int, width: int = 32):
        super().__init__()

        def block(cin, cout):
            return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]

        self.features = nn.Sequential(
            *block(in_channels, width), *block(width, width), nn.MaxPool2d(2),
            *block(width, 2 * width), *block(2 * width, 2 * width), nn.MaxPool2d(2),
            *block(2 * width, 4 * width), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.2),
        )
        self.fc = nn.Linear(4 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


def build_classifier(arch: str, in_channels: int, num_classes: int, width: int = 32,
                     pretrained: bool = False, pretrained_sha256: str | None = None) -> nn.Module:
    """The network; ``pretrained`` loads the verified ImageNet weights into a ResNet-34
    (:func:`pecker.weights.load_state_dict`: never unpickled; ``pretrained_sha256`` is the full hash
    to require, config key ``classifier.pretrained_sha256``)."""
    if arch == "small_cnn":
        return SmallCNN(in_channels, num_classes, width)
    if arch == "resnet34":
        from torchvision.models import resnet34

        model = resnet34(weights=None)
        if pretrained:
            from pecker import weights

            try:
                state, digest = weights.load_state_dict(weights.RESNET34, pretrained_sha256)
            except FileNotFoundError as err:
                raise RuntimeError(f"{err}; or set classifier.pretrained=false (recorded with every result)") from None
            model.load_state_dict(state, strict=True)
            model.pretrained_sha256 = digest  # recorded in the classifier's sidecar
        model.fc = nn.Linear(model.fc.in_features, num_classes)
        return model
    raise ValueError(f"config key 'classifier.arch': unknown architecture {arch!r}")


def head_parameters(model: nn.Module) -> list[nn.Parameter]:
    return list(model.fc.parameters())


def input_spec(arch: str, channels: int, input_size: int | None) -> dict:
    """How uint8 images are turned into the network's input; stored with the checkpoint."""
    if arch == "resnet34":
        return {"channels_in": 3, "repeat_gray": channels == 1, "size": input_size,
                "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)}
    return {"channels_in": channels, "repeat_gray": False, "size": input_size,
            "mean": [0.5] * channels, "std": [0.5] * channels}


def preprocess(images: np.ndarray | torch.Tensor, spec: dict, device: torch.device | str = "cpu") -> torch.Tensor:
    """uint8 NHWC -> normalised float NCHW on ``device``."""
    x = torch.as_tensor(images).to(device).permute(0, 3, 1, 2).float().div(255.0)
    if spec["repeat_gray"] and x.shape[1] == 1:
        x = x.repeat(1, 3, 1, 1)
    if spec["size"] and x.shape[-1] != spec["size"]:
        x = F.interpolate(x, size=(spec["size"], spec["size"]), mode="bilinear", align_corners=False, antialias=True)
    mean = torch.tensor(spec["mean"], device=x.device).view(1, -1, 1, 1)
    std = torch.tensor(spec["std"], device=x.device).view(1, -1, 1, 1)
    return (x - mean) / std


def save_classifier(prefix: str | Path, model: nn.Module, meta: dict) -> Path:
    return io.save_checkpoint(prefix, model.state_dict(), {"kind": "classifier", **meta})


def load_classifier(prefix: str | Path, device: torch.device | str = "cpu") -> tuple[nn.Module, dict]:
    """Verify the checksum, rebuild the architecture from the sidecar, load weights (eval mode)."""
    tensors, meta = io.load_checkpoint(prefix, device=device)
    arch = meta["arch"]
    model = build_classifier(arch["name"], arch["in_channels"], arch["num_classes"], arch.get("width", 32))
    model.load_state_dict(tensors, strict=True)
    return model.to(device).eval(), meta


@torch.no_grad()
def predict_logits(model: nn.Module, spec: dict, images: np.ndarray, batch_size: int = 500,
                   device: torch.device | str = "cpu") -> torch.Tensor:
    """Logits for uint8 NHWC images, in batches, on CPU."""
    model.eval()
    out = [model(preprocess(images[i:i + batch_size], spec, device)).float().cpu()
           for i in range(0, len(images), batch_size)]
    return torch.cat(out) if out else torch.zeros(0)
