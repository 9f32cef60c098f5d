"""Convert a published Selective Amnesia (SA) DDPM checkpoint into this project's checkpoint format.

The SA training code (``ddpm/runners/diffusion.py`` of github.com/clear-nus/selective-amnesia, also
used by SalUn and SFD) saves ``ckpt.pth`` with ``torch.save`` of a *list*::

    [model_state, optimizer_state, step, ema_state]     # ema_state only when model.ema is true

- ``model_state``: ``state_dict()`` of the network wrapped in ``torch.nn.DataParallel``, so every
  key starts with ``module.`` (``module.conv_in.weight``, ...);
- ``optimizer_state``: the Adam ``state_dict()``; ``step``: the int iteration index (0-based);
- ``ema_state``: the EMA helper's shadow dict, ``{name: tensor}`` over ``named_parameters()`` of the
  *unwrapped* network, so its keys have no ``module.`` prefix (the network has no buffers, so it is
  a complete state dict). SA samples with these EMA weights.

:func:`convert_published` verifies the full sha256 of the file *before* anything is unpickled, then
reads it with ``torch.load(..., weights_only=True)`` (tensors and plain containers only), picks the
EMA or raw weights, strips a ``module.`` prefix, loads them into
:class:`~pecker.diffusion.ddpm_conditional.DDPMConditionalUNet` with ``strict=True`` and writes a
safetensors checkpoint with a JSON sidecar (:func:`pecker.diffusion.unet.save_unet`). Afterwards nothing
of the pipeline reads the pickle again: :func:`pecker.diffusion.unet.load_unet` reads the
safetensors pair, like every other network of the project.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import torch

from pecker import io
from pecker.diffusion.ddpm_conditional import DDPMConditionalUNet
from pecker.diffusion.unet import save_unet

WHICH = ("ema", "raw")


def read_published(path: str | Path, expected_sha256: str) -> Any:
    """The unpickled content of a published checkpoint, after its full sha256 matched
    (:func:`pecker.io.open_verified`: hashed and read through one handle).

    Raises :class:`pecker.io.ChecksumError` (nothing unpickled) on a mismatch."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"published checkpoint not found: {path}")
    hint = ("not the published checkpoint (corrupt, truncated or a different file); nothing was unpickled - "
            "download it again or, if the publisher changed the file on purpose, review it and update the expected hash")
    with io.open_verified(path, expected_sha256, hint) as fh:
        return torch.load(fh, map_location="cpu", weights_only=True)


def _is_state_dict(obj) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and all(
        isinstance(k, str) and torch.is_tensor(v) for k, v in obj.items()
    )


def strip_prefix(state: Mapping[str, torch.Tensor], prefix: str = "module.") -> dict[str, torch.Tensor]:
    """Drop a ``DataParallel`` / ``DistributedDataParallel`` prefix carried by every key."""
    keys = list(state)
    if keys and all(k.startswith(prefix) for k in keys):
        return {k[len(prefix):]: v for k, v in state.items()}
    if any(k.startswith(prefix) for k in keys):
        raise ValueError(f"state dict mixes keys with and without the {prefix!r} prefix")
    return dict(state)


def published_state_dict(ckpt: Any, which: str = "ema") -> tuple[dict[str, torch.Tensor], dict]:
    """The ``which`` weights of an SA checkpoint list, prefix stripped, and a JSON-able description
    of the layout (``{"layout": ..., "step": ...}``)."""
    if which not in WHICH:
        raise ValueError(f"which must be one of {WHICH}, got {which!r}")
    if not isinstance(ckpt, (list, tuple)) or len(ckpt) not in (3, 4) or not _is_state_dict(ckpt[0]):
        got = type(ckpt).__name__
        if isinstance(ckpt, (list, tuple)):
            got += f" of length {len(ckpt)}"
        raise ValueError(
            "not an SA DDPM checkpoint: expected a list [model_state, optimizer_state, step(, ema_state)], "
            f"got a {got}"
        )
    has_ema = len(ckpt) == 4 and _is_state_dict(ckpt[3])
    if which == "ema" and not has_ema:
        raise ValueError(
            "the checkpoint has no EMA weights (list of length 3, trained with model.ema false); use which='raw'"
        )
    step = ckpt[2]
    layout = "sa_list[model_state, optimizer_state, step, ema_state]" if has_ema else (
        "sa_list[model_state, optimizer_state, step]")
    desc = {"layout": layout, "step": int(step) if isinstance(step, int) else None}
    src = ckpt[3] if which == "ema" else ckpt[0]
    return strip_prefix(src), desc


def save_published(ckpt: Any, origin: dict, out_prefix: str | Path, arch_cfg: Mapping[str, Any],
                   which: str = "ema", meta: dict | None = None) -> Path:
    """Strictly load the ``which`` weights of an already verified and read checkpoint
    (:func:`read_published`) into the network and save them; returns the safetensors path.
    ``origin`` (source file name and sha256) goes into the sidecar's ``origin``."""
    state, desc = published_state_dict(ckpt, which)
    model = DDPMConditionalUNet(arch_cfg)
    model.load_state_dict(state, strict=True)
    return save_unet(out_prefix, model, {
        "kind": "teacher", "weights": which, "origin": {**origin, "which": which, **desc}, **(meta or {}),
    })


def convert_published(path: str | Path, expected_sha256: str, out_prefix: str | Path,
                      arch_cfg: Mapping[str, Any], which: str = "ema", meta: dict | None = None) -> Path:
    """Verify, read, strictly load and re-save a published SA checkpoint; returns the safetensors path.

    ``arch_cfg``: the network's configuration (e.g. :data:`pecker.diffusion.ddpm_conditional.CIFAR10`).
    The sidecar records ``kind``, ``arch_config``, ``n_params`` and ``origin`` (source file name,
    its sha256, which weights, the list layout and the training step)."""
    if which not in WHICH:
        raise ValueError(f"which must be one of {WHICH}, got {which!r}")
    path = Path(path)
    ckpt = read_published(path, expected_sha256)
    origin = {"file": path.name, "sha256": str(expected_sha256).lower()}
    return save_published(ckpt, origin, out_prefix, arch_cfg, which, meta)
