"""The losses of SFD / PECKER (docs/method.md sections 3 and 4), written in conditions.

Every network call goes through a :class:`~pecker.diffusion.conditioning.Condition` (class labels,
or text embeddings with their guidance), so the same losses serve class and concept forgetting.
All losses sum over pixels and average over the batch. Models are called as they are: setting
train/eval modes and freezing parameters is the caller's job (see :mod:`pecker.unlearn.trainer`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from pecker.diffusion.conditioning import Condition, cat
from pecker.diffusion.schedule import Schedule, eps_pred, x0_pred


def _sum_pixels(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(1).sum(1)


@dataclass
class DenoiseTerm:
    """Samples ``x`` noised at ``t`` with ``eps``, to be denoised at the condition ``cond``."""

    x: torch.Tensor
    t: torch.Tensor
    eps: torch.Tensor
    cond: Condition


@dataclass
class ScoreTerm:
    """Samples ``x`` noised at ``t`` with ``eps``; the teacher is queried at ``teacher_cond``, the
    fake score at ``fake_cond``. Remember: both the retain condition. Forget (score override): the
    teacher at the cover / override condition, the fake score at the forget condition."""

    x: torch.Tensor
    t: torch.Tensor
    eps: torch.Tensor
    teacher_cond: Condition
    fake_cond: Condition


def _batched(terms, *fields):
    return [torch.cat([getattr(term, f) for term in terms]) for f in fields]


def _split_means(per: torch.Tensor, terms) -> list[torch.Tensor]:
    out, i = [], 0
    for term in terms:
        out.append(per[i:i + len(term.x)].mean())
        i += len(term.x)
    return out


def denoising_loss(model, sched: Schedule, x: torch.Tensor, t: torch.Tensor, eps: torch.Tensor,
                   cond: Condition) -> torch.Tensor:
    """``mean_batch sum_pixels (eps - eps_model(a_t x + s_t eps, t, c))^2`` (PECKER's saliency loss
    ``l_mse``)."""
    pred = eps_pred(model, sched.noise(x, t, eps), t, cond)
    return _sum_pixels((eps - pred) ** 2).mean()


def denoising_terms(model, sched: Schedule, terms: list[DenoiseTerm]) -> list[torch.Tensor]:
    """The denoising loss of each term (a batch mean each), all terms in one batched network call
    (same result as one call per term; with dropout the masks differ, only a different draw)."""
    x, t, eps = _batched(terms, "x", "t", "eps")
    pred = eps_pred(model, sched.noise(x, t, eps), t, cat([term.cond for term in terms]))
    return _split_means(_sum_pixels((eps - pred) ** 2), terms)


def sid_per_sample(x: torch.Tensor, x_phi: torch.Tensor, x_psi: torch.Tensor, xi: float,
                   clamp: float) -> torch.Tensor:
    """``l(x) = Q . [(x_phi - x) - xi Q] / sg(mean_pixels |x_phi - x|)`` with ``Q = x_phi - x_psi``,
    the normaliser clamped below at ``clamp``; one value per sample."""
    q = x_phi - x_psi
    with torch.no_grad():
        norm = (x_phi - x).abs().flatten(1).mean(1).clamp_min(clamp)
    return _sum_pixels(q * ((x_phi - x) - xi * q)) / norm


def score_terms(teacher, psi, sched: Schedule, terms: list[ScoreTerm], xi: float, clamp: float) -> list[torch.Tensor]:
    """The theta-step (score distillation) loss of each term, a batch mean each.

    Teacher and psi see the same ``z_t`` (same ``t`` and ``eps``) within a term; all terms go
    through each network in one batched call. Gradients flow to the samples ``x`` (directly and
    through the networks' inputs), not into the networks' parameters unless the caller leaves them
    trainable.
    """
    x, t, eps = _batched(terms, "x", "t", "eps")
    z = sched.noise(x, t, eps)
    x_phi = x0_pred(teacher, sched, z, t, cat([term.teacher_cond for term in terms]))
    x_psi = x0_pred(psi, sched, z, t, cat([term.fake_cond for term in terms]))
    return _split_means(sid_per_sample(x, x_phi, x_psi, xi, clamp), terms)
