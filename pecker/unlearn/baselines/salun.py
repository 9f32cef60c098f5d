"""SalUn (Fan et al., 2024) for a class-conditional DDPM (docs/method.md section 5). Not data-free.

1. *Mask* (:func:`salun_mask`): one pass over all real forget-class images through the raw teacher in
   eval mode, guided eps-MSE, each batch's gradient clipped to total norm ``mask.clip`` before it is
   accumulated, then the top ``mask.ratio`` of ``|grad|``: :func:`pecker.unlearn.mask.accumulated_gradients`
   and :func:`pecker.unlearn.mask.top_ratio_mask`, the code PECKER's mask uses.
2. *Unlearning* (:class:`SalUn`) from the raw teacher: ``L = mean-MSE(eps(z_f, c_f), sg(eps(z_f, c_p))) +
   alpha * eps-MSE(remaining)`` with ``c_p = (c_f + 1) mod K`` (or a random other class), label dropout on
   the remaining batch, the gradient multiplied by the mask; no EMA.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from pecker.diffusion.conditioning import ClassCondition
from pecker.diffusion.schedule import Schedule, draw_timesteps
from pecker.unlearn.mask import accumulated_gradients, top_ratio_mask


def _flip(x: torch.Tensor, rng: torch.Generator) -> torch.Tensor:
    flip = (torch.rand(len(x), generator=rng) < 0.5).to(x.device)
    x = x.clone()
    x[flip] = x[flip].flip(-1)
    return x


def salun_mask(teacher, sched: Schedule, forget_images: torch.Tensor, forget_class: int, null: int, m: dict,
               rng: torch.Generator, hflip: bool, antithetic: bool = True) -> list[torch.Tensor]:
    """Boolean masks over ``teacher``'s parameters (``named_parameters`` order) from one pass over
    ``forget_images`` (in [-1, 1]) in batches of ``m['batch_size']``. Sets eval mode."""
    teacher.eval()
    params = list(teacher.parameters())
    device = forget_images.device

    def batches():
        for i in range(0, len(forget_images), m["batch_size"]):
            x = forget_images[i:i + m["batch_size"]]
            if hflip:
                x = _flip(x, rng)
            t = draw_timesteps(len(x), sched.T, rng, antithetic).to(device)
            eps = torch.randn(x.shape, generator=rng).to(device)
            yield x, t, eps, ClassCondition.full(len(x), forget_class, null, device, m["guidance_scale"])

    grads = accumulated_gradients(teacher, sched, batches(), params, m["clip"])
    return top_ratio_mask(grads, m["ratio"], m["scope"])


def pseudo_labels(c_f: int, num_classes: int, n: int, rule: str, rng: torch.Generator) -> torch.Tensor:
    """``c_p``: ``(c_f + 1) mod K`` for every sample (``next``, SalUn's code) or a uniform draw among the
    classes other than ``c_f`` (``random``)."""
    if rule == "next":
        return torch.full((n,), (c_f + 1) % num_classes, dtype=torch.long)
    if rule == "random":
        others = torch.tensor([c for c in range(num_classes) if c != c_f], dtype=torch.long)
        return others[torch.randint(0, len(others), (n,), generator=rng)]
    raise ValueError(f"config key 'pseudo_label': {rule!r} is not one of next, random")


class SalUn:
    """The SalUn objective over real images (in [-1, 1]) and labels, with the masks ``masks``."""

    def __init__(self, s: dict, sched: Schedule, images: torch.Tensor, labels: torch.Tensor, forget_class: int,
                 num_classes: int, null: int, masks: list[torch.Tensor], hflip: bool):
        self.s, self.sched, self.masks, self.hflip = s, sched, masks, hflip
        self.fc, self.k, self.null = int(forget_class), int(num_classes), null
        self.device = images.device
        self.forget = images[labels == forget_class]
        keep = labels != forget_class
        self.retain, self.retain_labels = images[keep], labels[keep]
        if not len(self.forget) or not len(self.retain):
            raise ValueError(f"SalUn needs real images of the forget class {forget_class} and of the other classes")
        self.images_per_step = 2 * s["batch_size"]

    def _batch(self, pool, rng, n):
        x = pool[torch.randint(0, len(pool), (n,), generator=rng).to(self.device)]
        return _flip(x, rng) if self.hflip else x

    def loss(self, model, rng):
        s, B, T = self.s, self.s["batch_size"], self.sched.T
        idx = torch.randint(0, len(self.retain), (B,), generator=rng).to(self.device)
        x_r, y_r = self.retain[idx], self.retain_labels[idx].clone()
        if self.hflip:
            x_r = _flip(x_r, rng)
        drop = (torch.rand(B, generator=rng) < s["label_dropout"]).to(self.device)
        y_r[drop] = self.null
        x_f = self._batch(self.forget, rng, B)
        t_r = draw_timesteps(B, T, rng, s["antithetic"]).to(self.device)
        t_f = draw_timesteps(B, T, rng, s["antithetic"]).to(self.device)
        eps_r = torch.randn(x_r.shape, generator=rng).to(self.device)
        eps_f = torch.randn(x_f.shape, generator=rng).to(self.device)
        z_r, z_f = self.sched.noise(x_r, t_r, eps_r), self.sched.noise(x_f, t_f, eps_f)
        c_p = ClassCondition(pseudo_labels(self.fc, self.k, B, s["pseudo_label"], rng).to(self.device), self.null)
        with torch.no_grad():  # sg(eps(z_f, c_p)): the current model at the pseudo label
            target = c_p.call(model, z_f, t_f)
        both = ClassCondition(torch.cat([torch.full((B,), self.fc, device=self.device), y_r]), self.null)
        pred = both.call(model, torch.cat([z_f, z_r]), torch.cat([t_f, t_r]))
        fgt = F.mse_loss(pred[:B], target)
        rem = (eps_r - pred[B:]).pow(2).flatten(1).sum(1).mean()
        return fgt + s["alpha"] * rem, {"loss_forget": fgt.item(), "loss_retain": rem.item()}

    def edit_gradients(self, params) -> None:
        for p, m in zip(params, self.masks):
            if p.grad is not None:
                p.grad.mul_(m)
