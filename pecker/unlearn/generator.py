"""The one-step generator of SFD / PECKER (docs/method.md section 3).

``g_theta(n, c) = (z0 - s_init * eps_theta(z0, t_init, c)) / a_init`` with ``z0 = s_init * n``: the
x0-estimate of a diffusion UNet (a copy of the teacher) at the fixed noise level ``t_init``, applied
to pure scaled noise, at a condition (:mod:`pecker.diffusion.conditioning`). Its weights are an
ordinary conditional UNet; the sidecar of a saved generator records ``kind: one_step_generator``,
``t_init``, the diffusion schedule and what it was trained to forget (``forget`` / ``cover``), so
:func:`load_generator` rebuilds it without the config and the evaluation can check it.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from diffusers import UNet2DModel

from pecker.diffusion.conditioning import Condition, class_condition
from pecker.diffusion.schedule import Schedule, make_scheduler
from pecker.diffusion.unet import load_unet, save_unet

KIND = "one_step_generator"


class OneStepGenerator(torch.nn.Module):
    """``g_theta(n, c)``; ``unet`` holds theta, ``sched`` the DDPM coefficients. The generator is
    called unguided whatever the condition's guidance scale."""

    def __init__(self, unet: UNet2DModel, sched: Schedule, t_init: int):
        super().__init__()
        if not 0 <= t_init < sched.T:
            raise ValueError(f"config key 'unlearn.t_init': {t_init} is not in [0, {sched.T})")
        self.unet = unet
        self.t_init = int(t_init)
        self.a_init = float(sched.a[t_init])
        self.s_init = float(sched.s[t_init])

    @property
    def image_shape(self) -> tuple[int, int, int]:
        cfg = self.unet.config
        return (cfg.in_channels, cfg.sample_size, cfg.sample_size)

    def forward(self, n: torch.Tensor, cond: Condition) -> torch.Tensor:
        z0 = self.s_init * n
        t = torch.full((len(n),), self.t_init, device=n.device, dtype=torch.long)
        # always unguided: guidance belongs to the score networks' calls inside the losses
        return (z0 - self.s_init * cond.call(self.unet, z0, t).float()) / self.a_init


def copy_unet(unet: UNet2DModel) -> UNet2DModel:
    """An independent copy (own parameters) of a UNet, e.g. of the teacher."""
    return copy.deepcopy(unet)


def generator_meta(gen: OneStepGenerator, diffusion_cfg: dict) -> dict:
    return {"kind": KIND, "t_init": gen.t_init, "diffusion": dict(diffusion_cfg)}


def save_generator(prefix: str | Path, gen: OneStepGenerator, diffusion_cfg: dict, meta: dict | None = None,
                   state_dict: dict | None = None) -> Path:
    """Write the generator's UNet (or ``state_dict`` of the same architecture, e.g. EMA weights)
    with a sidecar that :func:`load_generator` understands."""
    unet = gen.unet
    if state_dict is not None:
        unet = copy_unet(gen.unet)
        unet.load_state_dict(state_dict, strict=True)
    return save_unet(prefix, unet, {**generator_meta(gen, diffusion_cfg), **(meta or {})})


def load_generator(prefix: str | Path, device: str | torch.device = "cpu") -> tuple[OneStepGenerator, dict]:
    """Rebuild a saved generator (checksum verified); returns ``(generator in eval mode, sidecar)``."""
    unet, meta = load_unet(prefix, device=device)
    if meta.get("kind") != KIND:
        raise ValueError(f"{prefix}: sidecar kind is {meta.get('kind')!r}, expected {KIND!r}")
    sched = Schedule(make_scheduler(meta.get("diffusion", {})), device)
    gen = OneStepGenerator(unet, sched, meta["t_init"]).to(device)
    gen.eval()
    return gen, meta


@torch.no_grad()
def sample_generator(gen: OneStepGenerator, cond: Condition | torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Images in [-1, 1] at the conditions ``cond`` (class labels may be passed as a tensor); noise
    from the CPU ``generator``: device-independent.

    The signature matches ``draw_batch`` of :func:`pecker.diffusion.sample.sample_many`, e.g.
    ``sample_many(lambda y, g: sample_generator(gen, y, g), labels, 250, seed)``.
    """
    device = next(gen.parameters()).device
    if torch.is_tensor(cond):
        cond = class_condition(gen.unet, cond)
    n = torch.randn((len(cond), *gen.image_shape), generator=generator).to(device)
    was_training = gen.training
    gen.eval()
    try:
        return gen(n, cond.to(device))
    finally:
        gen.train(was_training)
