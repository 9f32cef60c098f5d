"""PECKER's saliency mask on the generator (method.md section 4).

``g_s = grad_theta l_mse`` with ``l_mse`` the generator UNet's own noise-prediction loss on
forget-class data; ``m = 1(|g_s| >= gamma)`` with ``gamma`` the value that keeps the top ``ratio`` of
``|g_s|``, over all generator parameters at once (``scope="global"``, SalUn's rule) or per parameter
tensor (``scope="per_layer"``). The threshold is a k-th order statistic (``torch.kthvalue``), not a
sort.
"""

from __future__ import annotations

import torch

from pecker.unlearn.losses import denoising_loss


def saliency_gradients(unet, sched, x: torch.Tensor, t: torch.Tensor, eps: torch.Tensor, labels: torch.Tensor,
                       params: list[torch.Tensor]) -> tuple[float, list[torch.Tensor]]:
    """``(l_mse, g_s)``: the loss value and its gradient w.r.t. ``params`` (zeros where unused)."""
    loss = denoising_loss(unet, sched, x, t, eps, labels)
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    return loss.item(), [torch.zeros_like(p) if g is None else g.detach() for g, p in zip(grads, params)]


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
