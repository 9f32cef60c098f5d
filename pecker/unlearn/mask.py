"""PECKER's saliency mask on the generator (docs/method.md section 4): all of it lives here.

``g_s = grad_theta l_mse`` with ``l_mse`` the generator UNet's own noise-prediction loss on
forget-condition data; ``m = 1(|g_s| >= gamma)`` with ``gamma`` the value that keeps the top
``ratio`` of ``|g_s|``, over all generator parameters at once (``scope: global``, SalUn's rule) or
per parameter tensor (``scope: per_layer``). The threshold is a k-th order statistic
(``torch.kthvalue``), not a sort.

:class:`SaliencyMask` owns the mask's state, its refresh policy (``refresh``: ``every_step``,
``once``, ``every_k``), its data source (``source``: ``generator``, ``teacher``, ``real``), its
application to the generator's gradient (``apply_to``: ``forget`` or ``all``) and its state for
resumption. The unlearning loop (:mod:`pecker.unlearn.trainer`) holds one, or none for SFD.
SalUn's mask (:mod:`pecker.unlearn.baselines.salun`) is :func:`top_ratio_mask` of
:func:`accumulated_gradients` over the real forget-class images: the same gradient and threshold code.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Callable

import torch

from pecker.config import ConfigError
from pecker.diffusion.conditioning import Condition
from pecker.unlearn.losses import denoising_loss

log = logging.getLogger("pecker.unlearn.mask")

REFRESH = ("every_step", "once", "every_k")
SOURCES = ("generator", "teacher", "real")


def saliency_gradients(unet, sched, x: torch.Tensor, t: torch.Tensor, eps: torch.Tensor, cond: Condition,
                       params: list[torch.Tensor], amp=contextlib.nullcontext) -> tuple[float, list[torch.Tensor]]:
    """``(l_mse, g_s)``: the loss value and its gradient w.r.t. ``params`` (zeros where unused);
    the forward pass runs in the context ``amp()`` (the run's precision), the backward outside it."""
    with amp():
        loss = denoising_loss(unet, sched, x, t, eps, cond)
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    return loss.item(), [torch.zeros_like(p) if g is None else g.detach() for g, p in zip(grads, params)]


def accumulated_gradients(unet, sched, batches, params: list[torch.Tensor], clip: float | None = None) -> list[torch.Tensor]:
    """``sum_b clip(g_b)`` of the saliency gradients over ``batches`` of ``(x, t, eps, cond)`` (SalUn's
    one pass over the real forget-class images), each batch's gradient scaled to total norm at most
    ``clip`` before it is added (``None``: no clip). Its :func:`top_ratio_mask` is SalUn's mask."""
    total = [torch.zeros_like(p) for p in params]
    for x, t, eps, cond in batches:
        _, grads = saliency_gradients(unet, sched, x, t, eps, cond, params)
        if clip is not None:
            norm = float(torch.nn.utils.get_total_norm(grads))
            scale = min(1.0, clip / (norm + 1e-6))  # torch.nn.utils.clip_grad_norm_'s rule
            grads = [g.mul_(scale) for g in grads]
        for acc, g in zip(total, grads):
            acc.add_(g)
    return total


def n_kept(n: int, ratio: float) -> int:
    """How many of ``n`` entries the top-``ratio`` rule keeps (at least one)."""
    return max(1, min(n, int(round(ratio * n))))


def kth_largest(values: torch.Tensor, k: int) -> torch.Tensor:
    """The ``k``-th largest entry of a flat tensor (a selection, O(n); no full sort)."""
    if values.device.type == "cpu":
        return torch.kthvalue(values, values.numel() - k + 1).values
    return torch.topk(values, k, sorted=False).values.min()  # CUDA: multi-block radix select


def top_ratio_mask(grads: list[torch.Tensor], ratio: float, scope: str = "global") -> list[torch.Tensor]:
    """Boolean masks ``|g| >= gamma`` keeping the top ``ratio`` of ``|g|`` (ties at the threshold kept)."""
    if not 0 < ratio <= 1:
        raise ValueError(f"config key 'mask.ratio': {ratio} is not in (0, 1]")
    if scope == "global":
        flat = torch.cat([g.detach().abs().flatten() for g in grads])
        gamma = kth_largest(flat, n_kept(flat.numel(), ratio))
        del flat
        return [g.abs() >= gamma for g in grads]
    if scope == "per_layer":
        out = []
        for g in grads:
            a = g.detach().abs()
            out.append(a >= kth_largest(a.flatten(), n_kept(a.numel(), ratio)))
        return out
    raise ValueError(f"config key 'mask.scope': {scope!r} is not one of global, per_layer")


def density(masks: list[torch.Tensor]) -> float:
    """Share of parameters the mask keeps."""
    kept = sum(int(m.sum()) for m in masks)
    total = sum(m.numel() for m in masks)
    return kept / max(total, 1)


class SaliencyMask:
    """The mask over the generator's parameters ``params`` (named ``names``), configured by the
    method's ``mask`` settings; ``pool`` holds forget-condition images for the ``teacher`` and
    ``real`` sources (:func:`build_pool`)."""

    def __init__(self, settings: dict, params: list[torch.Tensor], names: list[str],
                 pool: torch.Tensor | None = None):
        if settings["refresh"] not in REFRESH:
            raise ConfigError(f"config key 'mask.refresh': {settings['refresh']!r} is not one of {', '.join(REFRESH)}")
        if settings["source"] not in SOURCES:
            raise ConfigError(f"config key 'mask.source': {settings['source']!r} is not one of {', '.join(SOURCES)}")
        if settings["source"] != "generator" and pool is None:
            raise ConfigError(f"config key 'mask.source': {settings['source']!r} needs a pool of forget images")
        self.s, self.params, self.names, self.pool = settings, params, names, pool
        self.masks: list[torch.Tensor] | None = None

    @property
    def density(self) -> float:
        return density(self.masks) if self.masks is not None else 1.0

    def due(self, step: int) -> bool:
        """Whether the mask is recomputed before the theta step of iteration ``step`` (0-based)."""
        if self.masks is None or self.s["refresh"] == "every_step":
            return True
        return self.s["refresh"] == "every_k" and step % self.s["refresh_every"] == 0

    def _data(self, gen, draws, forget: Callable[[int], Condition], x_f: torch.Tensor, amp) -> torch.Tensor:
        n = self.s["batch_size"]
        if self.s["source"] == "generator":
            if n == len(x_f):
                return x_f  # the psi step's detached forget samples: the same kind of draw, no extra forward
            gen.eval()
            with torch.no_grad(), amp():
                return gen(draws.randn(n), forget(n))
        idx = torch.randint(0, len(self.pool), (n,), generator=draws.rng)
        return self.pool[idx].to(draws.device)

    def refresh(self, gen, sched, draws, forget: Callable[[int], Condition], x_f: torch.Tensor,
                amp=contextlib.nullcontext) -> float:
        """Recompute the mask from ``l_mse`` of ``gen.unet`` (the one-step generator's UNet) on forget data.

        ``draws`` gives the run's random draws (``t``, ``randn``, its ``rng`` and ``device``),
        ``forget(n)`` the forget condition of ``n`` samples and ``x_f`` the psi step's detached forget
        samples (fresh no-grad samples of ``gen`` when the saliency batch has another size), ``amp``
        the context of the forward passes (the run's precision). Returns the saliency loss ``l_mse``.
        """
        x = self._data(gen, draws, forget, x_f, amp)
        t, eps = draws.t(len(x), self.s["t_min"], self.s["t_max"]), draws.randn(len(x))
        unet = gen.unet
        unet.train(self.s["generator_mode"] == "train")
        # the generator's own, unguided noise prediction (the generator is never guided)
        loss, grads = saliency_gradients(unet, sched, x, t, eps, forget(len(x)).with_guidance(1.0), self.params, amp)
        self.masks = top_ratio_mask(grads, self.s["ratio"], self.s["scope"])
        return loss

    def apply(self, g_remember: list[torch.Tensor], g_forget: list[torch.Tensor]) -> list[torch.Tensor]:
        """The generator's update direction from the two gradient parts (in place):
        ``g_r + m * g_f`` (``apply_to: forget``) or ``m * (g_r + g_f)`` (``apply_to: all``)."""
        if self.s["apply_to"] == "forget":
            return [gr.add_(gf.mul_(k)) for gr, gf, k in zip(g_remember, g_forget, self.masks)]
        return [gr.add_(gf).mul_(k) for gr, gf, k in zip(g_remember, g_forget, self.masks)]

    # -- state -----------------------------------------------------------------------------------
    def state(self) -> tuple[dict[str, torch.Tensor], dict]:
        if self.masks is None:
            return {}, {"has_mask": False}
        return {f"mask.{n}": m for n, m in zip(self.names, self.masks)}, {"has_mask": True}

    def load_state(self, tensors: dict[str, torch.Tensor], meta: dict, device) -> None:
        self.masks = [tensors[f"mask.{n}"].to(device) for n in self.names] if meta.get("has_mask") else None


def build_pool(s: dict, ds: dict, teacher, forget: Callable[[int], Condition], seed: int, device,
               data_dir) -> torch.Tensor | None:
    """Forget-class images for the saliency loss when ``mask.source`` is ``teacher`` or ``real``.

    Drawn from their own seeded generator, so a resumed run rebuilds the same pool."""
    m, fc = s["mask"], s["forget_class"]
    if m["source"] == "real":
        from pecker.data import load_prepared, to_model_range

        if data_dir is None:
            raise ConfigError("mask source 'real' needs the prepared dataset (--data)")
        images, labels, _ = load_prepared(data_dir)
        sel = images[labels == fc]
        if not len(sel):
            raise ValueError(f"{data_dir}: no images of forget class {fc}")
        return to_model_range(sel)
    if m["source"] == "teacher":
        from pecker.diffusion.sample import sample_batch
        from pecker.diffusion.schedule import make_scheduler

        gen = torch.Generator().manual_seed(seed + 7919)
        n = m["teacher_pool"]
        cond = forget(n).to("cpu")
        ddpm = make_scheduler(ds.get("diffusion") or {})
        chunks = [sample_batch(teacher, ddpm, cond[i:i + 256], gen, "ddim", m["teacher_sampling_steps"]).cpu()
                  for i in range(0, n, 256)]
        log.info("mask source teacher: drew %d DDIM samples of class %d", n, fc)
        return torch.cat(chunks)
    return None
