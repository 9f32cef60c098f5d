"""Selective Amnesia (Heng & Soh, 2023) for a class-conditional DDPM (docs/method.md section 5). Data-free.

1. *Replay*: ``replay.per_class`` samples of every class from the EMA teacher, guided
   (:func:`draw_replay`); the training replay keeps the classes other than ``c_f``.
2. *Fisher*: the diagonal ``F = mean_i g_i^2`` at the raw teacher in eval mode, with ``g_i`` the
   gradient of ``sum_t ||eps_t - eps(a_t x_i + s_t eps_t, t, c_i)||^2`` over all ``T`` timesteps (a
   new noise for each ``t``), or over a Monte-Carlo subset of ``n`` of them rescaled by ``T / n``
   (:func:`fisher_diagonal`).
3. *Forgetting* from the raw teacher: ``L = mse(u, c_f) + gamma mse(x_r, c_r) + lambda sum_j F_j
   (theta_j - theta*_j)^2`` with ``u`` uniform noise images in [-1, 1] and one shared draw of ``t``
   (:class:`SelectiveAmnesia`), through the shared loop of :mod:`pecker.unlearn.baselines.finetune`.
"""

from __future__ import annotations

import logging
from typing import Callable

import torch

from pecker.diffusion.conditioning import ClassCondition
from pecker.diffusion.sample import sample_batch
from pecker.diffusion.schedule import Schedule, draw_timesteps
from pecker.unlearn.losses import DenoiseTerm, denoising_loss, denoising_terms

log = logging.getLogger("pecker.unlearn.sa")


def draw_replay(teacher, ddpm, num_classes: int, rcfg: dict, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(images in [-1, 1], labels)``: ``per_class`` guided samples of every class (in class order),
    noise from a CPU generator seeded with ``seed``."""
    labels = torch.arange(num_classes).repeat_interleave(rcfg["per_class"])
    gen = torch.Generator().manual_seed(seed)
    teacher.eval()
    out = []
    for i in range(0, len(labels), rcfg["batch_size"]):
        out.append(sample_batch(teacher, ddpm, labels[i:i + rcfg["batch_size"]], gen, rcfg["sampler"], rcfg["steps"],
                                rcfg["guidance_scale"]).cpu())
        log.info("replay: %d / %d samples", min(i + rcfg["batch_size"], len(labels)), len(labels))
    return torch.cat(out), labels


def fisher_subset(n_images: int, labels: torch.Tensor, n_samples: int | None) -> torch.Tensor:
    """Indices of the Fisher samples: all, or the first ``n_samples`` taking the classes in turn."""
    if n_samples is None or n_samples >= n_images:
        return torch.arange(n_images)
    by_class = [torch.nonzero(labels == c).flatten() for c in labels.unique(sorted=True)]
    order = [idx[i] for i in range(max(len(b) for b in by_class)) for idx in by_class if i < len(idx)]
    return torch.stack(order[:n_samples])


def fisher_diagonal(model, sched: Schedule, x: torch.Tensor, cond: ClassCondition, randn: Callable[[tuple], torch.Tensor],
                    timesteps: Callable[[], torch.Tensor], t_batch: int = 250) -> list[torch.Tensor]:
    """Diagonal Fisher ``mean_i g_i^2`` over the samples ``x`` (conditions ``cond``), one tensor per
    parameter of ``model`` (in ``named_parameters`` order). Call it with the model in eval mode.

    For sample ``i``, ``g_i`` is the gradient of ``scale * sum_{t in ts} sum_pixels (eps_t - eps(a_t x_i +
    s_t eps_t, t, c_i))^2`` with ``ts = timesteps()`` (all ``T``, or a subset; ``scale = T / len(ts)``)
    and a fresh ``eps_t = randn(shape)`` per ``t``; ``t_batch`` timesteps go through the network at once
    (the gradients are accumulated, so the result does not depend on it).
    """
    params = [p for p in model.parameters()]
    fisher = [torch.zeros_like(p) for p in params]
    for i in range(len(x)):
        ts = timesteps().to(x.device)
        scale = sched.T / len(ts)
        for p in params:
            p.grad = None
        for j in range(0, len(ts), t_batch):
            t = ts[j:j + t_batch]
            xi = x[i:i + 1].expand(len(t), *x.shape[1:])
            eps = randn((len(t), *x.shape[1:])).to(x.device)
            # denoising_loss averages over the batch: times len(t) gives the sum over these timesteps
            loss = denoising_loss(model, sched, xi, t, eps, cond[[i] * len(t)]) * (len(t) * scale)
            loss.backward()
        for f, p in zip(fisher, params):
            if p.grad is not None:
                f.add_(p.grad.detach() ** 2)
    for p in params:
        p.grad = None
    return [f / len(x) for f in fisher]


def ewc_penalty(params: list[torch.Tensor], star: list[torch.Tensor], fisher: list[torch.Tensor]) -> torch.Tensor:
    """``sum_j F_j (theta_j - theta*_j)^2`` over all parameters."""
    return sum(((p - p0) ** 2 * f).sum() for p, p0, f in zip(params, star, fisher))


class SelectiveAmnesia:
    """The SA objective over a replay set of the retained classes (images in [-1, 1], labels).

    ``star``: the raw teacher's parameters, ``fisher``: their diagonal Fisher (both in
    ``named_parameters`` order); ``null`` is the network's null label (unused: no label dropout)."""

    def __init__(self, s: dict, sched: Schedule, replay: torch.Tensor, replay_labels: torch.Tensor,
                 star: list[torch.Tensor], fisher: list[torch.Tensor], forget_class: int, null: int, hflip: bool):
        if (replay_labels == forget_class).any():
            raise ValueError(f"SA replay holds samples of the forget class {forget_class}")
        self.s, self.sched, self.replay, self.replay_labels = s, sched, replay, replay_labels
        self.star, self.fisher = star, fisher
        self.forget_class, self.null, self.hflip = int(forget_class), null, hflip
        self.device = replay.device
        self.images_per_step = 2 * s["batch_size"]

    def loss(self, model, rng):
        s, B = self.s, self.s["batch_size"]
        idx = torch.randint(0, len(self.replay), (B,), generator=rng).to(self.device)
        x_r, c_r = self.replay[idx].clone(), self.replay_labels[idx]
        if self.hflip:
            flip = (torch.rand(B, generator=rng) < 0.5).to(self.device)
            x_r[flip] = x_r[flip].flip(-1)
        x_f = (torch.rand((B, *self.replay.shape[1:]), generator=rng) * 2 - 1).to(self.device)
        t = draw_timesteps(B, self.sched.T, rng, s["antithetic"]).to(self.device)  # shared by both terms
        eps_f = torch.randn(x_f.shape, generator=rng).to(self.device)
        eps_r = torch.randn(x_r.shape, generator=rng).to(self.device)
        c_f = ClassCondition.full(B, self.forget_class, self.null, self.device)
        fgt, rem = denoising_terms(model, self.sched, [DenoiseTerm(x_f, t, eps_f, c_f),
                                                       DenoiseTerm(x_r, t, eps_r, ClassCondition(c_r, self.null))])
        pen = ewc_penalty(list(model.parameters()), self.star, self.fisher)
        loss = fgt + s["gamma"] * rem + s["lambda_fisher"] * pen
        return loss, {"loss_forget": fgt.item(), "loss_retain": rem.item(), "loss_penalty": pen.item()}

    def edit_gradients(self, params) -> None:
        return None
