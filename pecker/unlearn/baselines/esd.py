"""Erased Stable Diffusion (ESD; Gandikota et al., 2023), the ESD-x / ESD-u rows of Tables 2-3
(docs/method.md section 5). Data-free: it needs only the concept's prompt.

Each step, with ``model`` the UNet being fine-tuned (starting from the teacher) and ``eps0`` a frozen
copy of the teacher:

1. draw ``k`` uniformly from ``0 .. ddim_steps - 1`` and sample ``z`` from noise with ``k`` DDIM steps of
   ``model`` itself (no gradient) under the concept prompt at guidance ``start_guidance``; ``t`` is the
   DDIM timestep ``z`` has reached (choice: the official code draws the DDPM timestep inside that DDIM
   step's interval);
2. ``loss = MSE(model(z, t, c), eps0(z, t, "") - eta (eps0(z, t, c) - eps0(z, t, "")))`` with
   ``eta = negative_guidance``: the model's score under the concept is pushed away from the concept.

``train: xattn`` (ESD-x) trains the cross-attention (``attn2``) parameters only; ``train: noxattn``
(ESD-u) every parameter except cross-attention, the time embedding and the output layer, as the
official code selects them. The loop, optimiser, checkpoints and resume are the fine-tuning baselines'
(:mod:`pecker.unlearn.baselines.finetune`); the result is a multi-step UNet that the evaluation
samples through ``StableDiffusionPipeline`` like the teacher.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

TRAIN = ("xattn", "noxattn", "full")


def trained_parameter(name: str, train: str) -> bool:
    """Whether ESD-x (``xattn``) or ESD-u (``noxattn``) trains the parameter called ``name`` (``full``:
    every parameter, SA's default)."""
    if train == "full":
        return True
    if train == "xattn":
        return "attn2" in name
    if train == "noxattn":
        return not ("attn2" in name or name.startswith(("time_embedding.", "conv_out.", "conv_norm_out.")))
    raise ValueError(f"config key 'train': {train!r} is not one of {', '.join(TRAIN)}")


def esd_concept(task: dict, s: dict) -> str:
    """The prompt ESD erases: ``concept`` when set, else the celebrity task's concept or 'nudity'."""
    if s.get("concept"):
        return str(s["concept"])
    return str(task["concept"]) if task["type"] == "celebrity" else "nudity"


class ESD:
    """The ESD objective (module docstring) over precomputed prompt embeddings ``(L, D)``."""

    def __init__(self, s: dict, frozen: torch.nn.Module, ddpm_config: dict, concept: torch.Tensor,
                 uncond: torch.Tensor, shape: tuple[int, ...], trained: list[bool]):
        from diffusers import DDIMScheduler

        self.s, self.frozen = s, frozen.eval().requires_grad_(False)
        self.ddim = DDIMScheduler.from_config(ddpm_config)
        self.ddim.set_timesteps(int(s["ddim_steps"]))
        self.concept, self.uncond, self.shape, self.trained = concept, uncond, shape, trained
        self.images_per_step = int(s["batch_size"])

    def _eps(self, net, z, t, h):
        return net(z, t, encoder_hidden_states=h).sample

    def loss(self, model: torch.nn.Module, rng: torch.Generator) -> tuple[torch.Tensor, dict]:
        s = self.s
        dev = next(model.parameters()).device
        b = self.images_per_step
        c = self.concept.to(dev).expand(b, *self.concept.shape)
        u = self.uncond.to(dev).expand(b, *self.uncond.shape)
        k = int(torch.randint(0, int(s["ddim_steps"]), (1,), generator=rng))
        z = torch.randn((b, *self.shape), generator=rng).to(dev)
        steps = self.ddim.timesteps
        was_training = model.training
        model.eval()
        with torch.no_grad():
            for t in steps[:k]:
                tt = t.to(dev).expand(b)
                e_c, e_u = self._eps(model, z, tt, c), self._eps(model, z, tt, u)
                z = self.ddim.step(e_u + s["start_guidance"] * (e_c - e_u), t, z, eta=s["ddim_eta"]).prev_sample
            t = steps[k].to(dev).expand(b)
            e0_c, e0_u = self._eps(self.frozen, z, t, c), self._eps(self.frozen, z, t, u)
            target = e0_u - s["negative_guidance"] * (e0_c - e0_u)
        model.train(was_training)
        loss = F.mse_loss(self._eps(model, z, t, c), target)
        return loss, {"loss_forget": float(loss.detach()), "ddim_steps_run": k}

    def edit_gradients(self, params: list[torch.Tensor]) -> None:
        """Parameters ESD does not train get no gradient (Adam skips them: they stay the teacher's)."""
        for p, keep in zip(params, self.trained):
            if not keep:
                p.grad = None


def run_esd(ds: dict, dataset: str, method: str, seed: int, s: dict, out_dir, device, teacher_prefix, chash: str,
            max_steps: int | None = None) -> dict:
    """One ESD run (or its resume) from the teacher ``teacher_prefix``; returns the final sidecar."""
    import logging

    from pecker.config import ConfigError
    from pecker.diffusion.schedule import make_scheduler
    from pecker.diffusion.unet import load_unet, n_params
    from pecker.provenance import Recorder
    from pecker.runs import RunFolder
    from pecker.text.stack import PromptEncoder, build_stack
    from pecker.unlearn.baselines.finetune import FineTuner, run_finetune

    log = logging.getLogger("pecker.unlearn.baselines")
    tasks = ds["unlearn"]["tasks"]
    if s.get("task") not in tasks:
        raise ConfigError(f"config key 'datasets.{dataset}.unlearn.methods.{method}.task': {s.get('task')!r} is not a "
                          f"task of datasets.{dataset}.unlearn.tasks ({', '.join(sorted(tasks))})")
    task = tasks[s["task"]]
    model, tmeta = load_unet(teacher_prefix, device=device)
    frozen, _ = load_unet(teacher_prefix, device=device)
    ddpm = make_scheduler(ds["diffusion"])
    stack = build_stack(ds["text"], ds["data"]).to(device)
    enc = PromptEncoder(stack, frozen, ddpm, device)
    concept = esd_concept(task, s)
    h = enc.encode([concept, ""])
    names = [n for n, _ in model.named_parameters()]
    trained = [trained_parameter(n, s["train"]) for n in names]
    n_trained = sum(p.numel() for p, keep in zip(model.parameters(), trained) if keep)
    cfg = model.config
    objective = ESD(s, frozen, ddpm.config, h[0], h[1], (cfg.in_channels, cfg.sample_size, cfg.sample_size), trained)
    log.info("ESD-%s %s seed %d on %s: concept %r, %s of %s parameters trained, config hash %s",
             "x" if s["train"] == "xattn" else "u", method, seed, dataset, concept, f"{n_trained:,}",
             f"{n_params(model):,}", chash)
    run = RunFolder(out_dir, chash, f"unlearn {method} seed {seed}", keep=s["keep_states"],
                    hint=f"lower config key 'datasets.{dataset}.unlearn.methods.{method}.lr'")
    rec = Recorder("unlearn", chash, seeds={"unlearn": seed}, method=method, dataset=dataset)
    meta = {"method": method, "seed": seed, "dataset": dataset, "config_hash": chash, "data_free": True,
            "forget": {"type": "text", "task": s["task"], "concept": concept}, "esd": {
                "train": s["train"], "n_trained_parameters": n_trained, "concept": concept}}
    inputs = {"teacher_sha256": tmeta["sha256"], "text_encoder": stack.describe()}
    tuner = FineTuner(model, s, seed, ema_init=None)
    return run_finetune(tuner, objective, run, rec, meta, inputs, max_steps)
