"""The losses of SFD / PECKER (method.md sections 3 and 4).

All losses sum over pixels and average over the batch. Models are called as they are: setting
train/eval modes and freezing parameters is the caller's job (see :mod:`pecker.unlearn.trainer`).
"""

from __future__ import annotations

import torch

from pecker.diffusion.schedule import Schedule, eps_pred, x0_pred


def _sum_pixels(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(1).sum(1)


def denoising_loss(model, sched: Schedule, x: torch.Tensor, t: torch.Tensor, eps: torch.Tensor,
                   labels: torch.Tensor) -> torch.Tensor:
    """``mean_batch sum_pixels (eps - eps_model(a_t x + s_t eps, t, labels))^2`` (the psi-step terms
    and PECKER's saliency loss ``l_mse``)."""
    pred = eps_pred(model, sched.noise(x, t, eps), t, labels)
    return _sum_pixels((eps - pred) ** 2).mean()


def psi_loss(psi, sched: Schedule, x_r, c_r, t_r, eps_r, x_f, c_f, t_f, eps_f, lam: float, mu: float):
    """psi step: ``lam * ||eps - eps_psi(z_t(x_r), t, c_r)||^2 + mu * ||eps - eps_psi(z_t(x_f), t, c_f)||^2``.

    Both terms go through psi in one batched call (same result as two calls; with dropout the
    masks differ, which is only a different random draw). Returns ``(total, remember, forget)``.
    """
    n_r = len(x_r)
    x, t, eps, c = (torch.cat(p) for p in ((x_r, x_f), (t_r, t_f), (eps_r, eps_f), (c_r, c_f)))
    pred = eps_pred(psi, sched.noise(x, t, eps), t, c)
    per = _sum_pixels((eps - pred) ** 2)
    rem, fgt = per[:n_r].mean(), per[n_r:].mean()
    return lam * rem + mu * fgt, rem, fgt


def sid_per_sample(x: torch.Tensor, x_phi: torch.Tensor, x_psi: torch.Tensor, xi: float,
                   clamp: float) -> torch.Tensor:
    """``l(x) = Q . [(x_phi - x) - xi Q] / sg(mean_pixels |x_phi - x|)`` with ``Q = x_phi - x_psi``,
    the normaliser clamped below at ``clamp``; one value per sample."""
    q = x_phi - x_psi
    with torch.no_grad():
        norm = (x_phi - x).abs().flatten(1).mean(1).clamp_min(clamp)
    return _sum_pixels(q * ((x_phi - x) - xi * q)) / norm


def theta_terms(teacher, psi, sched: Schedule, x_r, c_r, t_r, eps_r, x_f, c_f, c_o, t_f, eps_f,
                xi: float, clamp: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The theta-step terms ``(remember, forget)``, each a batch mean.

    remember: teacher and psi both at ``c_r`` on ``x_r``; forget (score override): teacher at the
    cover class ``c_o``, psi at ``c_f``, on ``x_f``. Teacher and psi see the same ``z_t`` (same ``t``
    and ``eps``) within a term; both terms go through each network in one batched call. Gradients
    flow to the samples ``x`` (directly and through the networks' inputs), not into the networks'
    parameters unless the caller leaves them trainable.
    """
    n_r = len(x_r)
    x = torch.cat((x_r, x_f))
    t = torch.cat((t_r, t_f))
    z = sched.noise(x, t, torch.cat((eps_r, eps_f)))
    c_cover = c_o if torch.is_tensor(c_o) else torch.full_like(c_f, int(c_o))
    x_phi = x0_pred(teacher, sched, z, t, torch.cat((c_r, c_cover)))
    x_psi = x0_pred(psi, sched, z, t, torch.cat((c_r, c_f)))
    per = sid_per_sample(x, x_phi, x_psi, xi, clamp)
    return per[:n_r].mean(), per[n_r:].mean()
