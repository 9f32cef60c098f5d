"""The DDPM noise schedule (diffusers ``DDPMScheduler``) and the quantities of docs/method.md section 2.

``a_t = sqrt(alphabar_t)``, ``s_t = sqrt(1 - alphabar_t)``, ``z_t = a_t x + s_t eps`` and the
Tweedie x0-estimate ``x(z_t, t, c) = (z_t - s_t eps(z_t, t, c)) / a_t``.
"""

from __future__ import annotations

import torch
from diffusers import DDIMScheduler, DDPMScheduler

from pecker.diffusion.conditioning import Condition


def make_scheduler(diffusion_cfg: dict) -> DDPMScheduler:
    return DDPMScheduler(
        num_train_timesteps=diffusion_cfg.get("num_train_timesteps", 1000),
        beta_start=diffusion_cfg.get("beta_start", 1e-4),
        beta_end=diffusion_cfg.get("beta_end", 0.02),
        beta_schedule=diffusion_cfg.get("beta_schedule", "linear"),
        prediction_type="epsilon",
        clip_sample=False,
    )


def make_ddim(ddpm: DDPMScheduler) -> DDIMScheduler:
    return DDIMScheduler.from_config(ddpm.config, clip_sample=False, set_alpha_to_one=False)


class Schedule:
    """Per-timestep coefficients as tensors on a device."""

    def __init__(self, scheduler: DDPMScheduler, device: str | torch.device = "cpu"):
        abar = scheduler.alphas_cumprod.to(device=device, dtype=torch.float32)
        self.T = len(abar)
        self.a = abar.sqrt()
        self.s = (1 - abar).sqrt()

    def coeffs(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(a_t, s_t)`` shaped ``(B, 1, 1, 1)`` for broadcasting."""
        return self.a[t].view(-1, 1, 1, 1), self.s[t].view(-1, 1, 1, 1)

    def noise(self, x: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        a, s = self.coeffs(t)
        return a * x + s * eps

    def x0_from_eps(self, z: torch.Tensor, t: torch.Tensor, eps_pred: torch.Tensor) -> torch.Tensor:
        a, s = self.coeffs(t)
        return (z - s * eps_pred) / a

    def sigma(self, t: int) -> float:
        """Sigma-equivalent noise level ``s_t / a_t`` (2.5 at t=440 for the linear schedule)."""
        return float(self.s[t] / self.a[t])


def eps_pred(model, z: torch.Tensor, t: torch.Tensor, cond: Condition) -> torch.Tensor:
    """Noise prediction of ``model`` at the conditions ``cond`` (guided when ``cond.guidance != 1``)."""
    return cond.eps(model, z, t)


def x0_pred(model, sched: Schedule, z: torch.Tensor, t: torch.Tensor, cond: Condition) -> torch.Tensor:
    """Tweedie x0-estimate ``(z_t - s_t eps(z_t, t, c)) / a_t``."""
    return sched.x0_from_eps(z, t, eps_pred(model, z, t, cond))


def draw_timesteps(n: int, T: int, generator: torch.Generator, antithetic: bool = False) -> torch.Tensor:
    """``n`` timesteps uniform on ``{0, ..., T - 1}`` from the CPU ``generator``; ``antithetic``: the
    first ``ceil(n / 2)`` are drawn and the rest are their mirror images ``T - 1 - t`` (the official
    DDPM / SA / SalUn code's draw)."""
    if not antithetic:
        return torch.randint(0, T, (n,), generator=generator)
    half = torch.randint(0, T, ((n + 1) // 2,), generator=generator)
    return torch.cat([half, T - 1 - half])[:n]
