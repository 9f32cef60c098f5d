"""Selective Amnesia (Heng & Soh, 2023) for a class-conditional DDPM and for a text-to-image UNet
(docs/method.md section 5). Data-free.

Class forgetting (Table 1):

1. *Replay*: ``replay.per_class`` samples of every class from the EMA teacher, guided
   (:func:`draw_replay`); the training replay keeps the classes other than ``c_f``.
2. *Fisher*: the diagonal ``F = mean_i g_i^2`` at the raw teacher in eval mode, with ``g_i`` the
   gradient of ``sum_t ||eps_t - eps(a_t x_i + s_t eps_t, t, c_i)||^2`` over all ``T`` timesteps (a
   new noise for each ``t``), or over a Monte-Carlo subset of ``n`` of them rescaled by ``T / n``
   (:func:`fisher_diagonal`).
3. *Forgetting* from the raw teacher: ``L = mse(x_f, c_f) + gamma mse(x_r, c_r) + lambda sum_j F_j
   (theta_j - theta*_j)^2`` with ``x_f`` uniform noise images in [-1, 1] and one shared draw of ``t``
   (:class:`SelectiveAmnesia`), through the shared loop of :mod:`pecker.unlearn.baselines.finetune`.

Concept forgetting (Tables 2-3, the official SA Stable Diffusion recipe): the replay is the teacher's
samples of the task's retain (generic) prompts, one condition per prompt, and the Fisher is taken over
them; ``x_f`` is a *surrogate* set, the teacher's samples of one prompt standing in for the concept ("a
middle-aged man" for a celebrity, clothed people for nudity), each trained under one of the forget
prompts drawn at random (:class:`Surrogate`). Samples are the pipeline's latents, the space the UNet is
trained in (choice: the official code decodes them to PNG files and encodes them back with the VAE).
``train`` limits the update to the cross-attention (``xattn``) or to everything else (``noxattn``), as
ESD and SA select them (:func:`pecker.unlearn.baselines.esd.trained_parameter`). The latent-diffusion
code SA's SD recipe runs on averages the squared error over the latent's elements (the class code sums
it): ``loss_reduction`` (null = ``mean`` on text datasets, ``sum`` on class ones) applies to the loss
and to the Fisher, which fixes the scale ``lambda_fisher`` acts on.
"""

from __future__ import annotations

import logging
from typing import Callable

import torch

from pecker.diffusion.conditioning import ClassCondition, Condition, TextCondition
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


def fisher_diagonal(model, sched: Schedule, x: torch.Tensor, cond: Condition, randn: Callable[[tuple], torch.Tensor],
                    timesteps: Callable[[], torch.Tensor], t_batch: int = 250,
                    reduction: str = "sum") -> list[torch.Tensor]:
    """Diagonal Fisher ``mean_i g_i^2`` over the samples ``x`` (conditions ``cond``), one tensor per
    parameter of ``model`` (in ``named_parameters`` order). Call it with the model in eval mode.

    For sample ``i``, ``g_i`` is the gradient of ``scale * sum_{t in ts} sum_pixels (eps_t - eps(a_t x_i +
    s_t eps_t, t, c_i))^2`` with ``ts = timesteps()`` (all ``T``, or a subset; ``scale = T / len(ts)``)
    and a fresh ``eps_t = randn(shape)`` per ``t``; ``t_batch`` timesteps go through the network at once
    (the gradients are accumulated, so the result does not depend on it). ``reduction`` ``mean``: the
    squared error averaged over the pixels instead of summed (the latent-diffusion code's loss).
    """
    params = [p for p in model.parameters()]
    fisher = [torch.zeros_like(p) for p in params]
    per_pixel = pixel_weight(x.shape[1:], reduction)
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
            loss = denoising_loss(model, sched, xi, t, eps, cond[[i] * len(t)]) * (len(t) * scale * per_pixel)
            loss.backward()
        for f, p in zip(fisher, params):
            if p.grad is not None:
                f.add_(p.grad.detach() ** 2)
    for p in params:
        p.grad = None
    return [f / len(x) for f in fisher]


def pixel_weight(shape: tuple[int, ...], reduction: str) -> float:
    """The factor that turns the pixel-summed squared error into ``reduction`` (``sum`` | ``mean``)."""
    if reduction not in ("sum", "mean"):
        raise ValueError(f"loss reduction {reduction!r} (sum, mean)")
    n = 1
    for d in shape:
        n *= int(d)
    return 1.0 if reduction == "sum" else 1.0 / n


def tensor_mean(tensors: list[torch.Tensor]) -> float:
    """The mean over all elements of ``tensors`` without concatenating them (an SD UNet's Fisher is 3.4 GB)."""
    return float(sum(t.sum(dtype=torch.float64) for t in tensors) / sum(t.numel() for t in tensors))


def ewc_penalty(params: list[torch.Tensor], star: list[torch.Tensor], fisher: list[torch.Tensor]) -> torch.Tensor:
    """``sum_j F_j (theta_j - theta*_j)^2`` over all parameters."""
    return sum(((p - p0) ** 2 * f).sum() for p, p0, f in zip(params, star, fisher))


class UniformNoise:
    """The class recipe's forget batch: uniform noise images in [-1, 1] under the forget label."""

    def __init__(self, shape: tuple[int, ...], forget_class: int, null: int | None, device):
        self.shape, self.forget_class, self.null, self.device = tuple(shape), int(forget_class), null, device

    def draw(self, n: int, rng: torch.Generator) -> tuple[torch.Tensor, Condition]:
        x = (torch.rand((n, *self.shape), generator=rng) * 2 - 1).to(self.device)
        return x, ClassCondition.full(n, self.forget_class, self.null, self.device)


class Surrogate:
    """The text recipe's forget batch: surrogate samples ``x`` (N, ...) drawn uniformly, each under one
    of the forget prompts' embeddings ``forget`` (K, L, D) drawn uniformly (unguided training loss)."""

    def __init__(self, x: torch.Tensor, forget: torch.Tensor):
        self.x, self.forget = x, forget.to(x.device)

    def draw(self, n: int, rng: torch.Generator) -> tuple[torch.Tensor, Condition]:
        i = torch.randint(0, len(self.x), (n,), generator=rng).to(self.x.device)
        k = torch.randint(0, len(self.forget), (n,), generator=rng).to(self.x.device)
        return self.x[i], TextCondition(self.forget[k])


class SelectiveAmnesia:
    """The SA objective: a replay set (samples and one condition each), a forget source
    (:class:`UniformNoise` or :class:`Surrogate`), the teacher's parameters ``star`` and their diagonal
    Fisher (both in ``named_parameters`` order). ``trained`` (optional, one bool per parameter): the
    parameters the update may change (the others get no gradient); :meth:`for_classes` builds the class
    recipe."""

    def __init__(self, s: dict, sched: Schedule, replay: torch.Tensor, replay_cond: Condition,
                 star: list[torch.Tensor], fisher: list[torch.Tensor], forget, hflip: bool,
                 trained: list[bool] | None = None):
        self.s, self.sched, self.replay, self.replay_cond = s, sched, replay, replay_cond
        self.star, self.fisher, self.forget, self.hflip, self.trained = star, fisher, forget, hflip, trained
        self.device = replay.device
        self.images_per_step = 2 * s["batch_size"]
        self.per_pixel = pixel_weight(replay.shape[1:], s.get("loss_reduction") or "sum")

    @classmethod
    def for_classes(cls, s: dict, sched: Schedule, replay: torch.Tensor, replay_labels: torch.Tensor,
                    star: list[torch.Tensor], fisher: list[torch.Tensor], forget_class: int, null: int,
                    hflip: bool) -> "SelectiveAmnesia":
        """The class recipe over a replay of the retained classes (``null``: the network's null label,
        unused in the loss: no label dropout)."""
        if (replay_labels == forget_class).any():
            raise ValueError(f"SA replay holds samples of the forget class {forget_class}")
        return cls(s, sched, replay, ClassCondition(replay_labels, null), star, fisher,
                   UniformNoise(replay.shape[1:], forget_class, null, replay.device), hflip)

    def loss(self, model, rng):
        s, B = self.s, self.s["batch_size"]
        idx = torch.randint(0, len(self.replay), (B,), generator=rng).to(self.device)
        x_r, c_r = self.replay[idx].clone(), self.replay_cond[idx]
        if self.hflip:
            flip = (torch.rand(B, generator=rng) < 0.5).to(self.device)
            x_r[flip] = x_r[flip].flip(-1)
        x_f, c_f = self.forget.draw(B, rng)
        t = draw_timesteps(B, self.sched.T, rng, s["antithetic"]).to(self.device)  # shared by both terms
        eps_f = torch.randn(x_f.shape, generator=rng).to(self.device)
        eps_r = torch.randn(x_r.shape, generator=rng).to(self.device)
        fgt, rem = denoising_terms(model, self.sched, [DenoiseTerm(x_f, t, eps_f, c_f), DenoiseTerm(x_r, t, eps_r, c_r)])
        if self.per_pixel != 1.0:
            fgt, rem = fgt * self.per_pixel, rem * self.per_pixel
        pen = ewc_penalty(list(model.parameters()), self.star, self.fisher)
        loss = fgt + s["gamma"] * rem + s["lambda_fisher"] * pen
        return loss, {"loss_forget": fgt.item(), "loss_retain": rem.item(), "loss_penalty": pen.item()}

    def edit_gradients(self, params) -> None:
        """Parameters outside ``trained`` get no gradient (Adam skips them: they stay the teacher's)."""
        if self.trained is None:
            return
        for p, keep in zip(params, self.trained):
            if not keep:
                p.grad = None


@torch.no_grad()
def draw_text_samples(pipe, prompts: list[str], rcfg: dict, seed: int, shape: tuple[int, ...], device,
                      what: str) -> torch.Tensor:
    """The pipeline's latents (scaled, what the UNet is trained on) for ``prompts`` in order:
    ``rcfg["steps"]`` DDIM steps at ``rcfg["guidance_scale"]``, batches of ``rcfg["batch_size"]``, the
    initial noise drawn on the CPU from ``seed`` (the same latents on every device)."""
    gen = torch.Generator().manual_seed(seed)
    noise = torch.randn((len(prompts), *shape), generator=gen)
    out, bs = [], rcfg["batch_size"]
    for i in range(0, len(prompts), bs):
        res = pipe(list(prompts[i:i + bs]), num_inference_steps=rcfg["steps"], guidance_scale=rcfg["guidance_scale"],
                   latents=noise[i:i + bs].to(device), output_type="latent")
        out.append(res.images.float().cpu())
        log.info("%s: %d / %d samples", what, min(i + bs, len(prompts)), len(prompts))
    return torch.cat(out)
