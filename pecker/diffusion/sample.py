"""Seeded conditional sampling from a multi-step DDPM (1000-step DDPM or N-step DDIM), with optional
classifier-free guidance (carried by the condition, :mod:`pecker.diffusion.conditioning`), and the
image files it writes (array + PNG grid)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from diffusers import DDPMScheduler
from tqdm import tqdm

from pecker import io
from pecker.data import from_model_range
from pecker.diffusion.conditioning import Condition, class_condition
from pecker.diffusion.schedule import make_ddim


@torch.no_grad()
def sample_batch(
    model,
    ddpm: DDPMScheduler,
    cond: Condition | torch.Tensor,
    generator: torch.Generator,
    sampler: str = "ddim",
    steps: int = 50,
    guidance_scale: float | None = None,
) -> torch.Tensor:
    """Images in [-1, 1] at the conditions ``cond``; noise drawn from the CPU ``generator``
    (device-independent). Class labels may be passed as a tensor (with ``guidance_scale``); a
    :class:`Condition` carries its own guidance unless ``guidance_scale`` overrides it."""
    device = next(model.parameters()).device
    if torch.is_tensor(cond):
        cond = class_condition(model, cond, 1.0 if guidance_scale is None else guidance_scale)
    elif guidance_scale is not None:
        cond = cond.with_guidance(guidance_scale)
    cfg = model.config
    shape = (len(cond), cfg.in_channels, cfg.sample_size, cfg.sample_size)
    if sampler == "ddpm":
        sched = DDPMScheduler.from_config(ddpm.config)
        sched.set_timesteps(ddpm.config.num_train_timesteps)
    elif sampler == "ddim":
        sched = make_ddim(ddpm)
        sched.set_timesteps(steps)
    else:
        raise ValueError(f"unknown sampler {sampler!r} (config key 'sample.sampler': ddpm | ddim)")
    z = torch.randn(shape, generator=generator).to(device)
    cond = cond.to(device)
    for t in sched.timesteps:
        eps = cond.eps(model, z, torch.full((len(z),), int(t), device=device, dtype=torch.long))
        if sampler == "ddpm":
            z = sched.step(eps, t, z, generator=generator).prev_sample
        else:
            z = sched.step(eps, t, z, eta=0.0).prev_sample
    return z


def class_labels(num_classes: int, per_class: int, classes: list[int] | None = None) -> torch.Tensor:
    classes = list(range(num_classes)) if classes is None else classes
    return torch.tensor(classes, dtype=torch.long).repeat_interleave(per_class)


def sample_many(draw_batch, labels: torch.Tensor, batch_size: int, seed: int, desc: str = "sampling") -> np.ndarray:
    """Draw images for ``labels`` in batches with ``draw_batch(labels, generator) -> [-1,1] tensor``;
    returns uint8 NHWC. The generator is seeded once, so results do not depend on the device."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for i in tqdm(range(0, len(labels), batch_size), desc=desc, unit="batch", mininterval=5):
        out.append(from_model_range(draw_batch(labels[i:i + batch_size], gen)).numpy())
    return np.concatenate(out) if out else np.zeros((0,), np.uint8)


def save_grid(path: str | Path, images: np.ndarray, nrow: int) -> Path:
    """uint8 NHWC -> PNG grid with ``nrow`` images per row, written atomically."""
    from PIL import Image

    n, h, w, c = images.shape
    rows = math.ceil(n / nrow)
    pad = 1
    canvas = np.full((rows * (h + pad) + pad, nrow * (w + pad) + pad, c), 255, np.uint8)
    for i, img in enumerate(images):
        r, col = divmod(i, nrow)
        canvas[pad + r * (h + pad): pad + r * (h + pad) + h, pad + col * (w + pad): pad + col * (w + pad) + w] = img
    pil = Image.fromarray(canvas[..., 0] if c == 1 else canvas)
    scale = max(1, 256 // max(h, 1) // 2)
    if scale > 1:
        pil = pil.resize((pil.width * scale, pil.height * scale), Image.NEAREST)
    with io.atomic_path(path, suffix=".png") as tmp:
        pil.save(tmp, format="PNG")
    return Path(path)


def save_samples(path: str | Path, images: np.ndarray, labels: torch.Tensor | np.ndarray, meta: dict) -> Path:
    """``path`` (.npz: images uint8 NHWC, labels) plus ``path`` with .json (metadata, provenance)."""
    path = Path(path)
    io.save_npz(path, images=images, labels=np.asarray(labels, dtype=np.int64))
    io.write_sidecar(path.with_suffix(".json"), {**meta, "file": path.name, "sha256": io.sha256_file(path),
                                                 "n_images": int(len(images))})
    return path
