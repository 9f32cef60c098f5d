"""The loop the fine-tuning baselines (SA, SalUn) share: one objective, one optimiser, an optional EMA,
checkpoints, resume and the per-step log, on the multi-step DDPM itself (docs/method.md section 5).

An *objective* (:class:`~pecker.unlearn.baselines.sa.SelectiveAmnesia`,
:class:`~pecker.unlearn.baselines.salun.SalUn`) gives the loss of one step from the run's random
draws and may edit the gradient before the optimiser step (SalUn's mask). Everything else (Adam,
grad-norm clip, EMA, the run folder of :mod:`pecker.runs`, the final files) is here, once. Run
layout under ``out_dir`` (``results/{dataset}/unlearn/{method}/seed{seed}``)::

    ckpt/inputs.safetensors + .json        what the objective computed once (replay + Fisher, mask)
    ckpt/step0000050/state.safetensors     resumable state: weights, EMA, Adam, RNGs (newest kept)
    ckpt/log.csv                           running per-step log
    unet.safetensors + .json               the weights the evaluation samples (EMA, or raw without EMA)
    log.csv                                final per-step log
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Protocol

import torch

from pecker import io
from pecker.diffusion.unet import enable_gradient_checkpointing, save_unet
from pecker.provenance import Recorder
from pecker.runs import RunFolder, drive, seed_all
from pecker.unlearn.generator import copy_unet

log = logging.getLogger("pecker.unlearn.baselines")

LOG_FIELDS = ["step", "images_seen", "loss", "loss_forget", "loss_retain", "loss_penalty", "grad_norm",
              "ema_decay", "step_time_s"]
FINAL = "unet"


class Objective(Protocol):
    images_per_step: int

    def loss(self, model: torch.nn.Module, rng: torch.Generator) -> tuple[torch.Tensor, dict]:
        """The step's loss (a scalar with a graph) and its terms (floats) for the log."""

    def edit_gradients(self, params: list[torch.Tensor]) -> None:
        """Change ``p.grad`` in place before clipping and the optimiser step (or nothing)."""


class FineTuner:
    """``model`` (trainable, train mode), Adam, grad-norm clip and an EMA started at ``ema_init``
    (None: no EMA; the raw weights are the result)."""

    def __init__(self, model: torch.nn.Module, s: dict, seed: int, ema_init: dict[str, torch.Tensor] | None = None):
        seed_all(seed)  # dropout (torch), numpy, python
        self.model, self.s = model.train().requires_grad_(True), s
        if s.get("gradient_checkpointing"):  # memory only: the same numbers (bookkeeping, not hashed)
            enable_gradient_checkpointing(model, f"unlearn.methods.{s['method']}.gradient_checkpointing")
        self.rng = torch.Generator().manual_seed(seed)
        self.names = [n for n, _ in model.named_parameters()]
        self.params = [p for _, p in model.named_parameters()]
        if s.get("weight_decay"):  # decoupled weight decay (SA's SD code: AdamW at its default 0.01)
            self.opt = torch.optim.AdamW(self.params, lr=s["lr"], betas=tuple(s["adam_betas"]), eps=s["adam_eps"],
                                         weight_decay=s["weight_decay"])
        else:
            self.opt = torch.optim.Adam(self.params, lr=s["lr"], betas=tuple(s["adam_betas"]), eps=s["adam_eps"])
        self.ema = None if ema_init is None else [ema_init[n].detach().clone().to(p.device)
                                                  for n, p in zip(self.names, self.params)]
        self.step = 0

    def train_step(self, objective: Objective) -> dict:
        t0 = time.perf_counter()
        loss, terms = objective.loss(self.model, self.rng)
        if not math.isfinite(loss.item()):
            raise FloatingPointError(f"{self.s['method']} loss is {loss.item()} at step {self.step + 1}: the run "
                                     f"diverged (lower config key 'unlearn.methods.{self.s['method']}.lr'); no state "
                                     "was written for this step")
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        objective.edit_gradients(self.params)
        clip = self.s["grad_clip"]  # null: no clip (the norm is still logged)
        gnorm = float(torch.nn.utils.clip_grad_norm_(self.params, float("inf") if clip is None else clip))
        self.opt.step()
        decay = float("nan")
        if self.ema is not None:
            decay = self.s["ema_decay"]
            with torch.no_grad():
                torch._foreach_lerp_(self.ema, [p.detach() for p in self.params], 1.0 - decay)
        self.step += 1
        return {"step": self.step, "images_seen": self.step * objective.images_per_step, "loss": loss.item(),
                "loss_forget": terms.get("loss_forget", float("nan")),
                "loss_retain": terms.get("loss_retain", float("nan")),
                "loss_penalty": terms.get("loss_penalty", float("nan")),
                "grad_norm": gnorm, "ema_decay": decay, "step_time_s": time.perf_counter() - t0}

    def result_state_dict(self) -> dict[str, torch.Tensor]:
        """The weights the evaluation samples: the EMA where there is one, else the raw weights."""
        sd = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        if self.ema is not None:
            sd.update({n: e.clone() for n, e in zip(self.names, self.ema)})
        return sd

    def state(self) -> tuple[dict, dict]:
        tensors = io.prefixed("model", self.model.state_dict())
        if self.ema is not None:
            tensors.update({f"ema.{n}": e for n, e in zip(self.names, self.ema)})
        ot, om = io.optimizer_to_tensors(self.opt, "opt")
        rt, rm = io.rng_to_tensors({"run": self.rng})
        tensors.update(ot)
        tensors.update(rt)
        return tensors, {"step": self.step, "opt": om, "rng": rm, "has_ema": self.ema is not None}

    def load_state(self, tensors: dict, meta: dict) -> None:
        self.model.load_state_dict(io.unprefixed("model", tensors), strict=True)
        if self.ema is not None:
            self.ema = [tensors[f"ema.{n}"].to(p.device).clone() for n, p in zip(self.names, self.params)]
        io.optimizer_from_tensors(self.opt, tensors, meta["opt"], "opt")
        io.rng_from_tensors(tensors, meta["rng"], {"run": self.rng})
        self.step = meta["step"]


def run_finetune(tuner: FineTuner, objective: Objective, run: RunFolder, rec: Recorder, meta: dict,
                 inputs: dict, max_steps: int | None = None) -> dict:
    """Run (or resume) ``tuner`` on ``objective`` in ``run``; writes ``OUT/unet`` when done.

    ``meta`` goes into every state and the final sidecar (method, seed, task, data_free, ...);
    ``inputs`` (e.g. the teacher's sha256) must match a state for it to be resumed."""
    s = tuner.s
    csv_log, wall_before, resumed_from = run.begin(tuner, s["steps"], LOG_FIELDS, expect=inputs)
    t_start = time.perf_counter()
    total = s["steps"] if max_steps is None else min(max_steps, s["steps"])
    what = f"{s['method']} seed{meta.get('seed')}"

    def on_log(row):
        log.info("%s step %d loss %.4g (forget %.4g retain %.4g penalty %.4g) %.2fs/it", what, row["step"],
                 row["loss"], row["loss_forget"], row["loss_retain"], row["loss_penalty"], row["step_time_s"])
        return f"loss={row['loss']:.4g}"

    def on_checkpoint(step):
        tensors, smeta = tuner.state()
        run.save_state(step, tensors, {**smeta, **meta, **inputs, "kind": f"{s['kind']}_state",
                                       "wall_clock_s": round(wall_before + time.perf_counter() - t_start, 3)})

    drive(lambda: tuner.train_step(objective), tuner.step, total, s["steps"], csv_log, log_every=s["log_every"],
          checkpoint_every=s["checkpoint_every"], on_log=on_log, on_checkpoint=on_checkpoint, desc=what)
    if tuner.step < s["steps"]:
        return {"step": tuner.step, "finished": False}
    wall = wall_before + time.perf_counter() - t_start
    prov = rec.finish(resumed_from=resumed_from, **inputs)
    run.finish_log()
    final = {**meta, **inputs, "kind": "diffusion_model", "steps": tuner.step, "step": tuner.step,
             "images_seen": tuner.step * objective.images_per_step, "wall_clock_s": round(wall, 3),
             "peak_memory": prov["memory"], "weights": "ema" if tuner.ema is not None else "raw",
             "settings": s, "provenance": prov}
    result = copy_unet(tuner.model)
    result.load_state_dict(tuner.result_state_dict(), strict=True)
    save_unet(Path(run.out_dir) / FINAL, result, final)
    return io.read_sidecar(Path(run.out_dir) / f"{FINAL}.json")
