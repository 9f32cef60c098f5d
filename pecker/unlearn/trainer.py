"""The SFD / PECKER unlearning loop (docs/method.md sections 3 and 4): one implementation; PECKER is
the loop with a :class:`~pecker.unlearn.mask.SaliencyMask`, SFD the loop without one.

The loop sees conditions, never class ids: a task (:mod:`pecker.unlearn.task`) draws the retain,
forget and cover conditions, the losses (:mod:`pecker.unlearn.losses`) take them, and the run
folder (:mod:`pecker.runs`) holds checkpoints, resume and the log. Layout under ``out_dir``
(``results/{dataset}/unlearn/{method}/seed{seed}``)::

    ckpt/step0000050/generator_ema.safetensors + .json   EMA generator at this step (kept for every
                                                         checkpoint, step 0 = the initial generator)
    ckpt/step0000050/state.safetensors + .json           resumable state: generator, fake score, EMA,
                                                         both Adam states, RNGs, mask (newest kept)
    ckpt/log.csv                                         running per-step log (survives a killed job)
    generator_ema.safetensors + .json                    final EMA generator (kind one_step_generator)
    log.csv                                              final per-step log

A restarted run resumes from the newest state and ends bit-identical to an uninterrupted run on CPU;
a state written under another config hash or teacher is refused (:class:`pecker.runs.ResumeRefused`),
never overwritten.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import torch

from pecker import io
from pecker.config import ConfigError, dataset_config
from pecker.diffusion.conditioning import cat
from pecker.diffusion.precision import Precision
from pecker.diffusion.schedule import Schedule, make_scheduler
from pecker.diffusion.unet import enable_gradient_checkpointing, load_unet, n_params, null_label
from pecker.provenance import Recorder
from pecker.runs import RunFolder, checkpoints, drive, seed_all
from pecker.unlearn.generator import OneStepGenerator, copy_unet, save_generator
from pecker.unlearn.losses import DenoiseTerm, ScoreTerm, denoising_terms, score_terms
from pecker.unlearn.mask import SaliencyMask, build_pool
from pecker.unlearn.settings import method_settings
from pecker.unlearn.task import ClassForgetting
from pecker.workflow import ds_stage_hash

log = logging.getLogger("pecker.unlearn")

LOG_FIELDS = [
    "step", "images_seen",
    "loss_psi", "loss_psi_remember", "loss_psi_forget",
    "loss_theta", "loss_theta_remember", "loss_theta_forget",
    "grad_norm_psi", "grad_norm_theta_remember", "grad_norm_theta_forget", "grad_norm_theta",
    "mask_density", "mask_refreshed", "loss_saliency", "ema_decay", "step_time_s",
]

# ----------------------------------------------------------------------------- the loop


def _fill(grads, params) -> list[torch.Tensor]:
    return [torch.zeros_like(p) if g is None else g for g, p in zip(grads, params)]


def _finite_rows(x: torch.Tensor) -> torch.Tensor:
    """Bool ``(B,)``: the samples of ``x`` whose every value is finite."""
    return torch.isfinite(x.detach()).flatten(1).all(1)


def _nan_to_num_(tensors) -> None:
    """Non-finite gradient entries set to 0, in place (``unlearn.nan_guard``)."""
    for t in tensors:
        if t is not None:
            torch.nan_to_num_(t, nan=0.0, posinf=0.0, neginf=0.0)


def _smallest_positive(dtype: torch.dtype) -> float:
    """The smallest positive (subnormal) value of a floating dtype."""
    fi = torch.finfo(dtype)
    return fi.smallest_normal * fi.eps


def _total_norm(tensors) -> float:
    tensors = [t for t in tensors if t is not None]
    return float(torch.nn.utils.get_total_norm(tensors)) if tensors else 0.0


class Draws:
    """The run's random draws (timesteps, noise, indices), all from one CPU generator: identical
    on any device, and saved with the state."""

    def __init__(self, seed: int, image_shape: tuple[int, ...], device: torch.device):
        self.rng = torch.Generator().manual_seed(seed)
        self.image_shape, self.device = image_shape, device

    def t(self, n: int, lo: int, hi: int) -> torch.Tensor:
        return torch.randint(lo, hi, (n,), generator=self.rng).to(self.device)

    def randn(self, n: int) -> torch.Tensor:
        return torch.randn((n, *self.image_shape), generator=self.rng).to(self.device)


def class_task(settings: dict, num_classes: int, teacher, device="cpu", where: str = "unlearn") -> ClassForgetting:
    """The class-forgetting task of a method's settings, with the teacher's null label."""
    return ClassForgetting(num_classes, settings["forget_class"], settings["cover_class"], null_label(teacher),
                           device, where, retain_all=settings.get("retain", "others") == "all")


def make_task(settings: dict, ds: dict, teacher, device, where: str):
    """The method's task and what it read: class forgetting, or (a dataset with a ``text`` section) the
    concept task ``settings['task']`` with its prompts encoded by the text stack."""
    if not ds.get("text"):
        return class_task(settings, ds["data"].get("num_classes", 10), teacher, device, where), {}
    from pecker.diffusion.schedule import make_scheduler as _ddpm
    from pecker.text.stack import PromptEncoder, build_stack
    from pecker.unlearn.task import concept_task

    stack = build_stack(ds["text"], ds["data"]).to(device)
    encoder = PromptEncoder(stack, teacher, _ddpm(ds.get("diffusion") or {}), device)
    return concept_task(settings, ds, encoder, device, where), {"text": stack.describe()}


class Unlearner:
    """Teacher ``phi`` (frozen), generator ``theta`` and fake score ``psi``, their optimisers, the EMA
    generator, the random draws and (PECKER) the saliency mask; :meth:`train_step` is one iteration.

    Randomness: conditions, timesteps and noise come from ``self.draws`` (a CPU generator); dropout
    uses torch's global RNG, seeded here.
    """

    def __init__(self, teacher, diffusion_cfg: dict, settings: dict, task, seed: int,
                 device: torch.device | str = "cpu", mask_pool: torch.Tensor | None = None):
        self.s, self.device, self.seed, self.task = settings, torch.device(device), seed, task
        seed_all(seed)
        self.sched = Schedule(make_scheduler(diffusion_cfg or {}), self.device)
        T = self.sched.T
        if not (0 <= settings["t_min"] and settings["t_max"] <= T and settings["mask"]["t_max"] <= T):
            raise ConfigError(f"config key 'unlearn.t_max': timesteps must lie in [0, {T}]")
        self.precision = Precision.from_config(settings.get("precision"), "unlearn.precision", self.device, pure=True)
        eps_low = torch.tensor(settings["adam_eps"], dtype=self.precision.weight_dtype)
        if settings["adam_eps"] > 0 and float(eps_low) == 0.0:
            raise ConfigError(f"config key 'unlearn.adam_eps': {settings['adam_eps']} is 0 in {self.precision.weights} "
                              f"(precision.weights; the smallest positive is {_smallest_positive(eps_low.dtype):.1e}):"
                              " Adam would divide 0 by 0 for parameters without gradient (the official float16 SD code uses 1e-6)")
        self.teacher = teacher.to(self.device).eval().requires_grad_(False)
        self.gen = OneStepGenerator(copy_unet(self.teacher).requires_grad_(True), self.sched, settings["t_init"])
        self.psi = copy_unet(self.teacher).requires_grad_(True)
        self.precision.prepare(self.teacher, self.gen.unet, self.psi)
        self.micro_batches(settings["batch_size"], settings["forget_batch_size"])  # unlearn.accumulate divides them
        if settings.get("gradient_checkpointing"):
            for net in (self.teacher, self.gen.unet, self.psi):
                enable_gradient_checkpointing(net, "unlearn.gradient_checkpointing")
        self.draws = Draws(seed, self.gen.image_shape, self.device)
        self.params = list(self.gen.unet.parameters())
        self.param_names = [n for n, _ in self.gen.unet.named_parameters()]
        self.ema = [p.detach().clone() for p in self.params]
        adam = dict(betas=tuple(settings["adam_betas"]), eps=settings["adam_eps"])
        self.opt_theta = torch.optim.Adam(self.params, lr=settings["lr_theta"], **adam)
        self.opt_psi = torch.optim.Adam(self.psi.parameters(), lr=settings["lr_psi"], **adam)
        m = settings["mask"]
        self.mask = SaliencyMask(m, self.params, self.param_names, mask_pool) if m["enabled"] else None
        self.step = 0
        self.nan_dropped = 0  # samples dropped by unlearn.nan_guard in this process

    @property
    def rng(self) -> torch.Generator:
        return self.draws.rng

    @property
    def images_per_step(self) -> int:
        """Generator images per iteration in the theta step (the paper's "images seen"): retain and
        forget batch, or the retain batch only (``unlearn.images_seen: retain``, as the official SFD
        code counts them for Stable Diffusion)."""
        if self.s.get("images_seen", "both") == "retain":
            return self.s["batch_size"]
        return self.s["batch_size"] + self.s["forget_batch_size"]

    def ema_decay(self) -> float:
        d = self.s["ema_decay"]
        return min(d, (1 + self.step) / (10 + self.step)) if self.s["ema_warmup"] else d

    def ema_state_dict(self) -> dict[str, torch.Tensor]:
        sd = {k: v.detach().clone() for k, v in self.gen.unet.state_dict().items()}
        sd.update({n: e.clone() for n, e in zip(self.param_names, self.ema)})
        return sd

    def amp(self):
        """The context of the forward passes (:mod:`pecker.diffusion.precision`)."""
        return self.precision.forward(self.device)

    def refresh_mask(self, x_f: torch.Tensor) -> float:
        """Recompute the saliency mask; returns the saliency loss ``l_mse``."""
        return self.mask.refresh(self.gen, self.sched, self.draws, self.task.forget, x_f, amp=self.amp)

    def _clip(self, tensors) -> None:
        if self.s["grad_clip_value"] is not None:
            torch.nn.utils.clip_grad_value_(tensors, self.s["grad_clip_value"])

    def draw_conditions(self):
        """``(c_r, c_f, c_o)`` of one iteration (retain, forget, cover) from the task."""
        return self.task.draw(self.rng, self.s["batch_size"], self.s["forget_batch_size"])

    def micro_batches(self, B: int, Bf: int) -> list[tuple[slice, slice]]:
        """``(retain, forget)`` index slices of the ``unlearn.accumulate`` micro-batches of one
        iteration (equal parts; one part = the whole batch)."""
        k = int(self.s.get("accumulate", 1))
        if B % k or Bf % k:
            raise ConfigError(f"config key 'unlearn.accumulate': {k} does not divide the retain / forget batch ({B} / {Bf})")
        r, f = B // k, Bf // k
        return [(slice(i * r, (i + 1) * r), slice(i * f, (i + 1) * f)) for i in range(k)]

    def psi_step(self, c_r, c_f) -> tuple[dict, torch.Tensor]:
        """Update psi on detached generator samples; returns the log entries and the forget samples.

        With ``unlearn.accumulate`` = k, the loss and its gradient are summed over k equal parts of
        the batch (each weighted 1/k, so the update is the full batch's); every random draw is made for
        the whole batch first, in the same order, and k = 1 is the plain step."""
        s, draws = self.s, self.draws
        B, Bf = len(c_r), len(c_f)
        # samples: generator in eval mode, no gradient (both conditions in one batched call)
        self.gen.eval()
        with torch.no_grad(), self.amp():
            x = self.gen(torch.cat((draws.randn(B), draws.randn(Bf))), cat([c_r, c_f]))
        x_r, x_f = x[:B], x[B:]
        c_r, c_f = self.task.fake_score_conditions(c_r, c_f, self.rng)  # prompt dropout (text tasks)
        # psi in train mode; t drawn independently per term
        self.psi.train().requires_grad_(True)
        t_r, t_f = draws.t(B, s["t_min"], s["t_max"]), draws.t(Bf, s["t_min"], s["t_max"])
        eps_r, eps_f = draws.randn(B), draws.randn(Bf)
        self.opt_psi.zero_grad(set_to_none=True)
        parts = self.micro_batches(B, Bf)
        if s.get("nan_guard"):  # drop non-finite samples (all draws were made for the whole batch)
            keep_r, keep_f = _finite_rows(x_r), _finite_rows(x_f)
            if not (bool(keep_r.all()) and bool(keep_f.all())):
                self.nan_dropped += int((~keep_r).sum() + (~keep_f).sum())
                log.warning("step %d: %d retain and %d forget samples are not finite; the psi step drops them",
                            self.step + 1, int((~keep_r).sum()), int((~keep_f).sum()))
                x_r, t_r, eps_r, c_r = x_r[keep_r], t_r[keep_r], eps_r[keep_r], c_r[keep_r]
                x_f, t_f, eps_f, c_f = x_f[keep_f], t_f[keep_f], eps_f[keep_f], c_f[keep_f]
                parts = [(slice(None), slice(None))]  # one part: the remainder need not divide by k
        rem = fgt = 0.0
        for r, f in parts:
            with self.amp():
                rem_i, fgt_i = denoising_terms(self.psi, self.sched, [DenoiseTerm(x_r[r], t_r[r], eps_r[r], c_r[r]),
                                                                      DenoiseTerm(x_f[f], t_f[f], eps_f[f], c_f[f])])
                loss_i = s["lam_psi"] * rem_i + s["mu_psi"] * fgt_i
            (loss_i / len(parts) if len(parts) > 1 else loss_i).backward()
            rem, fgt = rem + rem_i.detach() / len(parts), fgt + fgt_i.detach() / len(parts)
        loss = s["lam_psi"] * rem + s["mu_psi"] * fgt
        params = list(self.psi.parameters())
        if s.get("nan_guard"):
            _nan_to_num_(p.grad for p in params)
        gnorm = _total_norm(p.grad for p in params)
        self._clip(params)
        self.opt_psi.step()
        self.opt_psi.zero_grad(set_to_none=True)
        return {"loss_psi": float(loss), "loss_psi_remember": float(rem), "loss_psi_forget": float(fgt),
                "grad_norm_psi": gnorm}, x_f

    def _finite_terms(self, terms: list) -> list:
        """``unlearn.nan_guard``: each score term without its non-finite generator samples (their
        share of the loss is dropped, as the official SD code drops NaN samples)."""
        out = []
        for term in terms:
            keep = _finite_rows(term.x)
            if not bool(keep.all()):
                self.nan_dropped += int((~keep).sum())
                log.warning("step %d: %d generator samples are not finite; the theta step drops them",
                            self.step + 1, int((~keep).sum()))
                term = ScoreTerm(term.x[keep], term.t[keep], term.eps[keep], teacher_cond=term.teacher_cond[keep],
                                 fake_cond=term.fake_cond[keep])
            out.append(term)
        return out

    def theta_step(self, c_r, c_f, c_o) -> dict:
        """Update theta on fresh samples (same conditions, new noise) with the (masked) gradient
        (micro-batches as in :meth:`psi_step`; the mask acts on the summed gradient parts)."""
        s, draws = self.s, self.draws
        B, Bf = len(c_r), len(c_f)
        # generator in train mode; psi in eval mode and frozen; teacher frozen in eval mode
        self.psi.eval().requires_grad_(False)
        self.gen.train()
        n_r, n_f = draws.randn(B), draws.randn(Bf)
        t_r, t_f = draws.t(B, s["t_min"], s["t_max"]), draws.t(Bf, s["t_min"], s["t_max"])
        eps_r, eps_f = draws.randn(B), draws.randn(Bf)
        parts = self.micro_batches(B, Bf)
        g_rem = g_fgt = None
        rem = fgt = 0.0
        for r, f in parts:
            with self.amp():  # forward passes only; the backward passes below run outside autocast
                x_r = self.gen(n_r[r], c_r[r])
                x_f = self.gen(n_f[f], c_f[f])
                terms = [ScoreTerm(x_r, t_r[r], eps_r[r], teacher_cond=c_r[r], fake_cond=c_r[r]),
                         ScoreTerm(x_f, t_f[f], eps_f[f], teacher_cond=c_o[f], fake_cond=c_f[f])]
                if s.get("nan_guard"):
                    terms = self._finite_terms(terms)
                rem_i, fgt_i = score_terms(self.teacher, self.psi, self.sched, terms, s["xi"], s["normaliser_clamp"])
                loss_i = s["lam_theta"] * rem_i + s["mu_theta"] * fgt_i
            if len(parts) > 1:
                loss_i = loss_i / len(parts)
            # One backward pass through teacher and psi gives d loss / d x for both terms (samples do
            # not interact); one pass through each generator graph then separates grad(lam*remember)
            # from grad(mu*forget), at the cost of a single backward pass of the summed loss.
            gx_r, gx_f = torch.autograd.grad(loss_i, (x_r, x_f))
            gr = _fill(torch.autograd.grad(x_r, self.params, gx_r, allow_unused=True), self.params)
            gf = _fill(torch.autograd.grad(x_f, self.params, gx_f, allow_unused=True), self.params)
            if g_rem is None:
                g_rem, g_fgt = gr, gf
            else:
                torch._foreach_add_(g_rem, gr)
                torch._foreach_add_(g_fgt, gf)
            del gr, gf
            rem, fgt = rem + rem_i.detach() / len(parts), fgt + fgt_i.detach() / len(parts)
        loss = s["lam_theta"] * rem + s["mu_theta"] * fgt
        if s.get("nan_guard"):
            _nan_to_num_(g_rem)
            _nan_to_num_(g_fgt)
        gnorm_rem, gnorm_fgt = _total_norm(g_rem), _total_norm(g_fgt)
        if self.mask is None:  # SFD
            grads = [gr.add_(gf) for gr, gf in zip(g_rem, g_fgt)]
        else:  # PECKER
            grads = self.mask.apply(g_rem, g_fgt)
        del g_fgt
        for p, g in zip(self.params, grads):
            p.grad = g
        gnorm = _total_norm(grads)
        self._clip(self.params)
        self.opt_theta.step()
        self.opt_theta.zero_grad(set_to_none=True)
        return {"loss_theta": float(loss), "loss_theta_remember": float(rem), "loss_theta_forget": float(fgt),
                "grad_norm_theta_remember": gnorm_rem, "grad_norm_theta_forget": gnorm_fgt, "grad_norm_theta": gnorm}

    def ema_update(self) -> float:
        decay = self.ema_decay()
        with torch.no_grad():
            torch._foreach_lerp_(self.ema, [p.detach() for p in self.params], 1.0 - decay)
        return decay

    def train_step(self) -> dict:
        """One iteration: psi step, saliency mask (when due), theta step, EMA. Returns the log row."""
        t0 = time.perf_counter()
        c_r, c_f, c_o = self.draw_conditions()
        row, x_f = self.psi_step(c_r, c_f)
        refreshed, loss_sal = False, float("nan")
        if self.mask is not None and self.mask.due(self.step):  # psi's step leaves theta unchanged
            loss_sal, refreshed = self.refresh_mask(x_f), True
        row.update(self.theta_step(c_r, c_f, c_o))
        decay = self.ema_update()
        self.step += 1
        for key in ("loss_psi", "loss_theta"):
            if not math.isfinite(row[key]):
                raise FloatingPointError(f"unlearning {key} is {row[key]} at step {self.step}: the run diverged "
                                         "(lower config key 'unlearn.lr_theta' / 'lr_psi'); no state was written "
                                         "for this step")
        row.update({
            "step": self.step, "images_seen": self.step * self.images_per_step,
            "mask_density": self.mask.density if self.mask is not None else 1.0,
            "mask_refreshed": int(refreshed), "loss_saliency": loss_sal,
            "ema_decay": decay, "step_time_s": time.perf_counter() - t0,
        })
        return {k: row[k] for k in LOG_FIELDS}

    def start_from(self, generator_state: dict[str, torch.Tensor]) -> None:
        """Start theta and its EMA from another run's generator (stage 2 of SFD-Two-Stage)."""
        self.gen.unet.load_state_dict(generator_state, strict=True)
        self.ema = [p.detach().clone() for p in self.params]

    # -- state ---------------------------------------------------------------------------------
    def state(self) -> tuple[dict[str, torch.Tensor], dict]:
        tensors = io.prefixed("generator", self.gen.unet.state_dict())
        tensors.update(io.prefixed("fake_score", self.psi.state_dict()))
        tensors.update({f"ema.{n}": e for n, e in zip(self.param_names, self.ema)})
        ot, om = io.optimizer_to_tensors(self.opt_theta, "opt_theta")
        pt, pm = io.optimizer_to_tensors(self.opt_psi, "opt_psi")
        rt, rm = io.rng_to_tensors({"unlearn": self.rng})
        tensors.update(ot)
        tensors.update(pt)
        tensors.update(rt)
        mt, mm = self.mask.state() if self.mask is not None else ({}, {"has_mask": False})
        tensors.update(mt)
        meta = {"step": self.step, "images_seen": self.step * self.images_per_step,
                "opt_theta": om, "opt_psi": pm, "rng": rm, **mm}
        return tensors, meta

    def load_state(self, tensors: dict[str, torch.Tensor], meta: dict) -> None:
        dev = self.device
        self.gen.unet.load_state_dict(io.unprefixed("generator", tensors), strict=True)
        self.psi.load_state_dict(io.unprefixed("fake_score", tensors), strict=True)
        self.ema = [tensors[f"ema.{n}"].to(dev).clone() for n in self.param_names]
        # Optimizer.load_state_dict moves the moments to the parameters' device itself.
        io.optimizer_from_tensors(self.opt_theta, tensors, meta["opt_theta"], "opt_theta")
        io.optimizer_from_tensors(self.opt_psi, tensors, meta["opt_psi"], "opt_psi")
        io.rng_from_tensors(tensors, meta["rng"], {"unlearn": self.rng})
        if self.mask is not None:
            self.mask.load_state(tensors, meta, dev)
        self.step = meta["step"]


# ----------------------------------------------------------------------------- runs


def stage_one(s: dict, init_dir: str | Path | None, teacher, device) -> dict:
    """What stage 2 of SFD-Two-Stage takes from its finished stage-1 run folder ``init_dir``: the final
    EMA generator's weights and, with ``stage2_teacher: fake_score``, the fake score of stage 1's
    newest state as the teacher (None: the original teacher). Checksums are verified on load."""
    if init_dir is None:
        raise ConfigError(f"method {s['method']!r} starts from {s['init_from']!r} (init_from): pass its run folder (--init)")
    init_dir = Path(init_dir)
    gen_sd, gmeta = io.load_checkpoint(init_dir / "generator_ema", device=device)
    if gmeta.get("method") != s["init_from"]:
        raise ConfigError(f"{init_dir}/generator_ema.json is a run of {gmeta.get('method')!r}, "
                          f"config key 'init_from' names {s['init_from']!r}")
    out = {"generator": gen_sd, "teacher": None,
           "inputs": {"init_from": s["init_from"], "init_sha256": gmeta["sha256"]}}
    if s.get("stage2_teacher", "original") == "fake_score":
        prefix = RunFolder(init_dir, "", "stage 1").latest_state()
        if prefix is None:
            raise FileNotFoundError(f"{init_dir}/ckpt holds no state with stage 1's fake score (stage2_teacher: fake_score)")
        tensors, smeta = io.load_checkpoint(prefix, device=device)
        if smeta.get("step") != gmeta.get("step"):
            raise ValueError(f"{prefix}: state at step {smeta.get('step')}, the final generator at {gmeta.get('step')}")
        fake = copy_unet(teacher)
        fake.load_state_dict(io.unprefixed("fake_score", tensors), strict=True)
        out["teacher"] = fake.eval().requires_grad_(False)
        out["inputs"]["stage2_teacher_sha256"] = smeta["sha256"]
    return out


def initial_generator(s: dict, prefix: str | Path | None, device) -> dict:
    """The weights a generator starts from under ``unlearn.generator_init`` (checksum verified on load)."""
    if prefix is None:
        raise ConfigError(f"method {s['method']!r}: config key 'unlearn.generator_init' is set; pass the converted "
                          "network (--generator-init PREFIX, written by rule convert_generator_init)")
    state, meta = io.load_checkpoint(prefix, device=device)
    return {"generator": state, "teacher": None,
            "inputs": {"generator_init": str(s["generator_init"]["pickle"]), "generator_init_sha256": meta["sha256"]}}


def list_checkpoints(out_dir: str | Path) -> list[tuple[int, Path]]:
    """``(step, generator_ema prefix)`` of every checkpoint of a run, by step (for curves over steps)."""
    return checkpoints(out_dir, "generator_ema")


def run_unlearning(
    cfg: dict,
    dataset: str,
    method: str,
    seed: int,
    teacher_prefix: str | Path,
    out_dir: str | Path,
    device: torch.device | str = "cpu",
    data_dir: str | Path | None = None,
    max_steps: int | None = None,
    init_dir: str | Path | None = None,
    generator_init: str | Path | None = None,
    init_only: bool = False,
) -> dict:
    """Run (or resume) one unlearning run; returns the final generator_ema sidecar.

    ``max_steps`` stops after that many iterations in total without writing the final outputs
    (used to test resumption). ``init_dir``: the finished stage-1 run folder of a method with
    ``init_from`` (SFD-Two-Stage). ``generator_init``: the converted network of ``unlearn.generator_init``
    (SiD-LSG's generator for SD), the start of the generator of a method without ``init_from``.
    ``init_only``: write the starting generator as ``OUT/generator_ema`` (step 0, the method's task in
    its sidecar) and stop, with no training state: the "SiD-LSG" row, the distilled generator as is. Raises :class:`pecker.runs.ResumeRefused` when the run folder holds
    a state of another configuration or teacher.
    """
    ds = dataset_config(cfg, dataset)
    if not ds.get("unlearn"):
        raise ConfigError(f"config key 'datasets.{dataset}.unlearn' is missing")
    s = method_settings(ds["unlearn"], method, dataset)
    device = torch.device(device)
    teacher, tmeta = load_unet(teacher_prefix, device=device)
    init = stage_one(s, init_dir, teacher, device) if s.get("init_from") else None
    if init is not None and init["teacher"] is not None:
        teacher = init["teacher"]
    res, ch = ds["data"]["resolution"], ds["data"]["channels"]
    if (teacher.config.sample_size, teacher.config.in_channels) != (res, ch):
        raise ValueError(
            f"teacher {teacher_prefix} is {teacher.config.in_channels}x{teacher.config.sample_size}^2, config "
            f"datasets.{dataset}.data asks for {ch}x{res}^2"
        )
    chash = ds_stage_hash(ds, "unlearn", method=method, seed=seed, dataset=dataset)
    run = RunFolder(out_dir, chash, f"unlearn {method} seed {seed}", keep=s["keep_states"],
                    hint=f"lower config key 'datasets.{dataset}.unlearn.lr_theta' / 'lr_psi' (or "
                         f"'unlearn.methods.{method}.lr_theta' / 'lr_psi')")
    rec = Recorder("unlearn", chash, seeds={"unlearn": seed}, method=method, dataset=dataset)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    task, task_inputs = make_task(s, ds, teacher, device, f"datasets.{dataset}.unlearn")
    pool = build_pool(s, ds, teacher, task.forget, seed, device, data_dir) if s["mask"]["enabled"] else None
    unl = Unlearner(teacher, ds.get("diffusion") or {}, s, task, seed, device, pool)
    inputs = {"teacher_sha256": tmeta["sha256"], **task_inputs}
    if init is None and s.get("generator_init"):
        init = initial_generator(s, generator_init, device)
    if init is not None:
        unl.start_from(init["generator"])
        inputs.update(init["inputs"])
    log.info("unlearn %s seed %d on %s: generator %s parameters, device %s, config hash %s",
             method, seed, dataset, f"{n_params(unl.gen.unet):,}", device, chash)

    if init_only:
        meta = {"method": method, "seed": seed, "dataset": dataset, "config_hash": chash, "step": 0, "steps": 0,
                "images_seen": 0, "init_only": True, **task.describe(), **inputs, "data_free": True,
                "precision": unl.precision.describe(),
                "provenance": rec.finish(teacher=str(teacher_prefix), teacher_sha256=tmeta["sha256"])}
        save_generator(Path(out_dir) / "generator_ema", unl.gen, ds.get("diffusion") or {}, meta, unl.ema_state_dict())
        return io.read_sidecar(Path(out_dir) / "generator_ema.json")
    csv_log, wall_before, resumed_from = run.begin(unl, s["steps"], LOG_FIELDS, expect=inputs)

    t_start = time.perf_counter()
    diffusion = ds.get("diffusion") or {}

    def save(step_: int) -> None:
        # training wall-clock so far (across resumes): the x-axis of the wall-clock curves
        common = {"step": step_, "images_seen": step_ * unl.images_per_step, "config_hash": chash,
                  "method": method, "seed": seed, **task.describe(), **inputs,
                  "precision": unl.precision.describe(),
                  "wall_clock_s": round(wall_before + time.perf_counter() - t_start, 3)}
        tensors, smeta = unl.state()
        run.check_finite(step_, tensors)  # before any file of this checkpoint is written
        save_generator(run.step_dir(step_) / "generator_ema", unl.gen, diffusion, common, unl.ema_state_dict())
        run.save_state(step_, tensors, {**smeta, **common, "kind": "unlearn_state"})

    if resumed_from is None:
        save(0)

    total = s["steps"] if max_steps is None else min(max_steps, s["steps"])

    def on_log(row):
        log.info("step %d loss_psi %.4g (r %.4g f %.4g) loss_theta %.4g (r %.4g f %.4g) mask %.3f %.2fs/it",
                 row["step"], row["loss_psi"], row["loss_psi_remember"], row["loss_psi_forget"], row["loss_theta"],
                 row["loss_theta_remember"], row["loss_theta_forget"], row["mask_density"], row["step_time_s"])
        return f"psi={row['loss_psi']:.3g}, theta={row['loss_theta']:.3g}"

    drive(unl.train_step, unl.step, total, s["steps"], csv_log, log_every=s["log_every"],
          checkpoint_every=s["checkpoint_every"], on_log=on_log, on_checkpoint=save, desc=f"unlearn {method} seed{seed}")
    if unl.step < s["steps"]:
        return {"step": unl.step, "finished": False}

    wall = wall_before + time.perf_counter() - t_start
    prov = rec.finish(resumed_from=resumed_from, teacher=str(teacher_prefix), teacher_sha256=tmeta["sha256"])
    meta = {
        "method": method, "seed": seed, "dataset": dataset, "config_hash": chash,
        "steps": unl.step, "step": unl.step, "images_seen": unl.step * unl.images_per_step,
        "precision": unl.precision.describe(), "wall_clock_s": round(wall, 3), "peak_memory": prov["memory"], "weights": "ema",
        **({"nan_samples_dropped_since_start": unl.nan_dropped} if s.get("nan_guard") else {}),
        **({} if ds.get("text") else {"forget_class": s["forget_class"], "cover_class": s["cover_class"]}),
        **task.describe(),
        "data_free": not (s["mask"]["enabled"] and s["mask"]["source"] == "real"), "settings": s, "teacher": str(teacher_prefix), **inputs, "provenance": prov,
    }
    run.finish_log()
    save_generator(run.out_dir / "generator_ema", unl.gen, diffusion, meta, unl.ema_state_dict())
    return io.read_sidecar(run.out_dir / "generator_ema.json")
