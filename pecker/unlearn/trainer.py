"""The SFD / PECKER unlearning loop (method.md sections 3 and 4): one implementation, the saliency
mask on or off.

Run layout under ``out_dir`` (``results/{dataset}/unlearn/{method}/seed{seed}``)::

    ckpt/step0000050/generator_ema.safetensors + .json   EMA generator at this step (kept for every
                                                         checkpoint, step 0 = the initial generator)
    ckpt/step0000050/state.safetensors + .json           resumable state: generator, fake score, EMA,
                                                         both Adam states, RNGs, mask (newest kept)
    ckpt/log.csv                                         running per-step log (survives a killed job)
    generator_ema.safetensors + .json                    final EMA generator (kind one_step_generator)
    log.csv                                              final per-step log

A restarted run resumes from the newest state and ends bit-identical to an uninterrupted run on CPU;
a state written under another config hash is refused, never overwritten.
"""

from __future__ import annotations

import csv
import logging
import math
import shutil
import time
from pathlib import Path

import torch
from tqdm import tqdm

from pecker import io
from pecker.config import ConfigError, dataset_config
from pecker.unlearn.settings import method_settings, run_hash
from pecker.diffusion.schedule import Schedule, make_scheduler
from pecker.diffusion.unet import load_unet, n_params
from pecker.provenance import Recorder
from pecker.unlearn.generator import OneStepGenerator, copy_unet, save_generator
from pecker.unlearn.losses import psi_loss, theta_terms
from pecker.unlearn.mask import density, saliency_gradients, top_ratio_mask

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


def _total_norm(tensors) -> float:
    tensors = [t for t in tensors if t is not None]
    return float(torch.nn.utils.get_total_norm(tensors)) if tensors else 0.0


class Unlearner:
    """Teacher ``phi`` (frozen), generator ``theta`` and fake score ``psi``, their optimisers, the EMA
    generator, the RNGs and the saliency mask; :meth:`train_step` is one iteration.

    Randomness: labels, timesteps and noise come from ``self.rng`` (a CPU generator: identical draws
    on any device); dropout uses torch's global RNG, seeded here.
    """

    def __init__(self, teacher, diffusion_cfg: dict, settings: dict, num_classes: int, seed: int,
                 device: torch.device | str = "cpu", mask_pool: torch.Tensor | None = None):
        self.s, self.device, self.seed = settings, torch.device(device), seed
        torch.manual_seed(seed)
        self.rng = torch.Generator().manual_seed(seed)
        self.sched = Schedule(make_scheduler(diffusion_cfg or {}), self.device)
        T = self.sched.T
        if not (0 <= settings["t_min"] and settings["t_max"] <= T and settings["mask"]["t_max"] <= T):
            raise ConfigError(f"config key 'unlearn.t_max': timesteps must lie in [0, {T}]")
        self.teacher = teacher.to(self.device).eval().requires_grad_(False)
        self.gen = OneStepGenerator(copy_unet(self.teacher).requires_grad_(True), self.sched, settings["t_init"])
        self.psi = copy_unet(self.teacher).requires_grad_(True)
        self.params = list(self.gen.unet.parameters())
        self.param_names = [n for n, _ in self.gen.unet.named_parameters()]
        self.ema = [p.detach().clone() for p in self.params]
        adam = dict(betas=tuple(settings["adam_betas"]), eps=settings["adam_eps"])
        self.opt_theta = torch.optim.Adam(self.params, lr=settings["lr_theta"], **adam)
        self.opt_psi = torch.optim.Adam(self.psi.parameters(), lr=settings["lr_psi"], **adam)
        fc = settings["forget_class"]
        for key in ("forget_class", "cover_class"):
            if not 0 <= settings[key] < num_classes:
                raise ConfigError(f"config key 'unlearn.{key}': {settings[key]} is not in [0, {num_classes})")
        self.retain_classes = torch.tensor([c for c in range(num_classes) if c != fc], dtype=torch.long)
        self.mask: list[torch.Tensor] | None = None
        self.mask_density = 1.0
        self.mask_pool = mask_pool
        self.step = 0

    # -- random draws (all from self.rng, on the CPU) ------------------------------------------
    def _t(self, n: int, lo: int, hi: int) -> torch.Tensor:
        return torch.randint(lo, hi, (n,), generator=self.rng).to(self.device)

    def _randn(self, n: int) -> torch.Tensor:
        return torch.randn((n, *self.gen.image_shape), generator=self.rng).to(self.device)

    @property
    def images_per_step(self) -> int:
        """Generator images per iteration in the theta step (the paper's "images seen")."""
        return self.s["batch_size"] + self.s["forget_batch_size"]

    def ema_decay(self) -> float:
        d = self.s["ema_decay"]
        return min(d, (1 + self.step) / (10 + self.step)) if self.s["ema_warmup"] else d

    def ema_state_dict(self) -> dict[str, torch.Tensor]:
        sd = {k: v.detach().clone() for k, v in self.gen.unet.state_dict().items()}
        sd.update({n: e.clone() for n, e in zip(self.param_names, self.ema)})
        return sd

    def _mask_due(self) -> bool:
        m = self.s["mask"]
        if not m["enabled"]:
            return False
        if self.mask is None or m["refresh"] == "every_step":
            return True
        return m["refresh"] == "every_k" and self.step % m["refresh_every"] == 0

    def _mask_data(self, x_f: torch.Tensor) -> torch.Tensor:
        m = self.s["mask"]
        if m["source"] == "generator":
            if m["batch_size"] == len(x_f):
                return x_f  # the psi step's detached forget samples: same kind of draw, no extra forward
            c = torch.full((m["batch_size"],), self.s["forget_class"], dtype=torch.long, device=self.device)
            self.gen.eval()
            with torch.no_grad():
                return self.gen(self._randn(m["batch_size"]), c)
        if self.mask_pool is None:
            raise RuntimeError(f"mask source {m['source']!r} needs a pool of forget-class images")
        idx = torch.randint(0, len(self.mask_pool), (m["batch_size"],), generator=self.rng)
        return self.mask_pool[idx].to(self.device)

    def refresh_mask(self, x_f: torch.Tensor) -> float:
        """Recompute the saliency mask; returns the saliency loss ``l_mse``."""
        m = self.s["mask"]
        x = self._mask_data(x_f)
        t, eps = self._t(len(x), m["t_min"], m["t_max"]), self._randn(len(x))
        c = torch.full((len(x),), self.s["forget_class"], dtype=torch.long, device=self.device)
        self.gen.unet.train(m["generator_mode"] == "train")
        loss, grads = saliency_gradients(self.gen.unet, self.sched, x, t, eps, c, self.params)
        self.mask = top_ratio_mask(grads, m["ratio"], m["scope"])
        self.mask_density = density(self.mask)
        return loss

    def _clip(self, tensors) -> None:
        if self.s["grad_clip_value"] is not None:
            torch.nn.utils.clip_grad_value_(tensors, self.s["grad_clip_value"])

    def draw_labels(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Retain labels uniform over the classes other than ``c_f``, and the forget labels."""
        s, dev = self.s, self.device
        idx = torch.randint(0, len(self.retain_classes), (s["batch_size"],), generator=self.rng)
        c_r = self.retain_classes[idx].to(dev)
        c_f = torch.full((s["forget_batch_size"],), s["forget_class"], dtype=torch.long, device=dev)
        return c_r, c_f

    def psi_step(self, c_r: torch.Tensor, c_f: torch.Tensor) -> tuple[dict, torch.Tensor]:
        """Update psi on detached generator samples; returns the log entries and the forget samples."""
        s = self.s
        B, Bf = len(c_r), len(c_f)
        # samples: generator in eval mode, no gradient
        self.gen.eval()
        with torch.no_grad():
            x = self.gen(torch.cat((self._randn(B), self._randn(Bf))), torch.cat((c_r, c_f)))
        x_r, x_f = x[:B], x[B:]
        # psi in train mode; t drawn independently per term
        self.psi.train().requires_grad_(True)
        t_r, t_f = self._t(B, s["t_min"], s["t_max"]), self._t(Bf, s["t_min"], s["t_max"])
        loss, rem, fgt = psi_loss(self.psi, self.sched, x_r, c_r, t_r, self._randn(B),
                                  x_f, c_f, t_f, self._randn(Bf), s["lam_psi"], s["mu_psi"])
        self.opt_psi.zero_grad(set_to_none=True)
        loss.backward()
        params = list(self.psi.parameters())
        gnorm = _total_norm(p.grad for p in params)
        self._clip(params)
        self.opt_psi.step()
        self.opt_psi.zero_grad(set_to_none=True)
        return {"loss_psi": loss.item(), "loss_psi_remember": rem.item(), "loss_psi_forget": fgt.item(),
                "grad_norm_psi": gnorm}, x_f

    def theta_step(self, c_r: torch.Tensor, c_f: torch.Tensor) -> dict:
        """Update theta on fresh samples (same labels, new noise) with the (masked) gradient."""
        s = self.s
        B, Bf = len(c_r), len(c_f)
        # generator in train mode; psi in eval mode and frozen; teacher frozen in eval mode
        self.psi.eval().requires_grad_(False)
        self.gen.train()
        x_r = self.gen(self._randn(B), c_r)
        x_f = self.gen(self._randn(Bf), c_f)
        t_r, t_f = self._t(B, s["t_min"], s["t_max"]), self._t(Bf, s["t_min"], s["t_max"])
        rem, fgt = theta_terms(self.teacher, self.psi, self.sched, x_r, c_r, t_r, self._randn(B),
                               x_f, c_f, s["cover_class"], t_f, self._randn(Bf), s["xi"], s["normaliser_clamp"])
        loss = s["lam_theta"] * rem + s["mu_theta"] * fgt
        # One backward pass through teacher and psi gives d loss / d x for both terms (samples do not
        # interact); one pass through each generator graph then separates grad(lam*remember) from
        # grad(mu*forget), at the cost of a single backward pass of the summed loss.
        gx_r, gx_f = torch.autograd.grad(loss, (x_r, x_f))
        g_rem = _fill(torch.autograd.grad(x_r, self.params, gx_r, allow_unused=True), self.params)
        g_fgt = _fill(torch.autograd.grad(x_f, self.params, gx_f, allow_unused=True), self.params)
        gnorm_rem, gnorm_fgt = _total_norm(g_rem), _total_norm(g_fgt)
        m = s["mask"]
        if m["enabled"] and m["apply_to"] == "forget":
            grads = [gr.add_(gf.mul_(k)) for gr, gf, k in zip(g_rem, g_fgt, self.mask)]
        elif m["enabled"]:
            grads = [gr.add_(gf).mul_(k) for gr, gf, k in zip(g_rem, g_fgt, self.mask)]
        else:
            grads = [gr.add_(gf) for gr, gf in zip(g_rem, g_fgt)]
        del g_fgt
        for p, g in zip(self.params, grads):
            p.grad = g
        gnorm = _total_norm(grads)
        self._clip(self.params)
        self.opt_theta.step()
        self.opt_theta.zero_grad(set_to_none=True)
        return {"loss_theta": loss.item(), "loss_theta_remember": rem.item(), "loss_theta_forget": fgt.item(),
                "grad_norm_theta_remember": gnorm_rem, "grad_norm_theta_forget": gnorm_fgt, "grad_norm_theta": gnorm}

    def ema_update(self) -> float:
        decay = self.ema_decay()
        with torch.no_grad():
            torch._foreach_lerp_(self.ema, [p.detach() for p in self.params], 1.0 - decay)
        return decay

    def train_step(self) -> dict:
        """One iteration: psi step, saliency mask (when due), theta step, EMA. Returns the log row."""
        t0 = time.perf_counter()
        c_r, c_f = self.draw_labels()
        row, x_f = self.psi_step(c_r, c_f)
        refreshed, loss_sal = False, float("nan")
        if self._mask_due():  # the psi step leaves theta unchanged: same mask as before it
            loss_sal, refreshed = self.refresh_mask(x_f), True
        row.update(self.theta_step(c_r, c_f))
        decay = self.ema_update()
        self.step += 1
        for key in ("loss_psi", "loss_theta"):
            if not math.isfinite(row[key]):
                raise FloatingPointError(f"unlearning {key} is {row[key]} at step {self.step}")
        row.update({
            "step": self.step, "images_seen": self.step * self.images_per_step,
            "mask_density": self.mask_density, "mask_refreshed": int(refreshed), "loss_saliency": loss_sal,
            "ema_decay": decay, "step_time_s": time.perf_counter() - t0,
        })
        return {k: row[k] for k in LOG_FIELDS}

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
        if self.mask is not None:
            tensors.update({f"mask.{n}": m for n, m in zip(self.param_names, self.mask)})
        meta = {"step": self.step, "images_seen": self.step * self.images_per_step,
                "opt_theta": om, "opt_psi": pm, "rng": rm, "has_mask": self.mask is not None}
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
        self.mask = [tensors[f"mask.{n}"].to(dev) for n in self.param_names] if meta.get("has_mask") else None
        self.mask_density = density(self.mask) if self.mask is not None else 1.0
        self.step = meta["step"]


# ----------------------------------------------------------------------------- checkpoints


def step_dir(ckpt_dir: Path, step: int) -> Path:
    return ckpt_dir / f"step{step:07d}"


def latest_state(ckpt_dir: Path) -> Path | None:
    """Prefix of the newest complete resumable state (its sidecar is written last)."""
    sidecars = sorted(ckpt_dir.glob("step*/state.json"))
    return sidecars[-1].with_suffix("") if sidecars else None


def list_checkpoints(out_dir: str | Path) -> list[tuple[int, Path]]:
    """``(step, generator_ema prefix)`` of every checkpoint of a run, by step (for curves over steps)."""
    out = []
    for side in sorted(Path(out_dir, "ckpt").glob("step*/generator_ema.json")):
        out.append((int(side.parent.name[4:]), side.with_suffix("")))
    return out


def _prune_states(ckpt_dir: Path, keep: int | None) -> None:
    if keep is None:
        return
    for side in sorted(ckpt_dir.glob("step*/state.json"))[:-keep]:
        side.unlink(missing_ok=True)  # sidecar first: a half-pruned state is never "complete"
        side.with_suffix(".safetensors").unlink(missing_ok=True)


def _read_log(path: Path, upto: int) -> list[dict]:
    if not path.is_file():
        return []
    with path.open(newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if None not in r.values() and None not in r]
    out, last = [], 0
    for r in rows:
        try:
            st = int(r["step"])
        except (TypeError, ValueError):
            continue
        if last < st <= upto:
            out.append(r)
            last = st
    return out


class _CsvLog:
    """Per-step CSV rows, flushed as written; rewritten (atomically) on resume."""

    def __init__(self, path: Path, rows: list[dict]):
        self.path = path
        with io.atomic_path(path) as tmp, tmp.open("w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=LOG_FIELDS)
            w.writeheader()
            w.writerows(rows)
        self.fh = path.open("a", newline="")
        self.writer = csv.DictWriter(self.fh, fieldnames=LOG_FIELDS)

    def write(self, row: dict) -> None:
        self.writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
        self.fh.flush()

    def close(self) -> None:
        self.fh.close()


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
) -> dict:
    """Run (or resume) one unlearning run; returns the final generator_ema sidecar.

    ``max_steps`` stops after that many iterations in total without writing the final outputs
    (used to test resumption).
    """
    ds = dataset_config(cfg, dataset)
    if not ds.get("unlearn"):
        raise ConfigError(f"config key 'datasets.{dataset}.unlearn' is missing")
    s = method_settings(ds["unlearn"], method, dataset)
    out_dir, device = Path(out_dir), torch.device(device)
    ckpt_dir = out_dir / "ckpt"

    teacher, tmeta = load_unet(teacher_prefix, device=device)
    res, ch = ds["data"]["resolution"], ds["data"]["channels"]
    if (teacher.config.sample_size, teacher.config.in_channels) != (res, ch):
        raise ValueError(
            f"teacher {teacher_prefix} is {teacher.config.in_channels}x{teacher.config.sample_size}^2, config "
            f"datasets.{dataset}.data asks for {ch}x{res}^2"
        )
    rhash = run_hash(ds, s, seed, tmeta["sha256"])
    rec = Recorder("unlearn", rhash, seeds={"unlearn": seed}, method=method, dataset=dataset)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    pool = _mask_pool(s, ds, teacher, seed, device, data_dir) if s["mask"]["enabled"] else None
    unl = Unlearner(teacher, ds.get("diffusion") or {}, s, ds["data"].get("num_classes", 10), seed, device, pool)
    log.info("unlearn %s seed %d on %s: generator %s parameters, device %s, config hash %s",
             method, seed, dataset, f"{n_params(unl.gen.unet):,}", device, rhash)

    prev = latest_state(ckpt_dir)
    wall_before, resumed_from = 0.0, None
    if prev is not None:
        meta = io.read_json(prev.with_suffix(".json"))
        if meta.get("config_hash") != rhash:
            raise RuntimeError(
                f"{prev}.json was written with config hash {meta.get('config_hash')}, the current config "
                f"(method {method!r}, seed {seed}, teacher {teacher_prefix}) hashes to {rhash}; refusing to "
                f"resume: move {ckpt_dir} away or restore that config (nothing was overwritten)"
            )
        if meta["step"] > s["steps"]:
            raise RuntimeError(
                f"{prev}.json is at step {meta['step']}, beyond the configured steps ({s['steps']}); refusing to "
                f"resume: raise steps or move {ckpt_dir} away (nothing was overwritten)"
            )
        tensors, meta = io.load_checkpoint(prev, device="cpu")
        unl.load_state(tensors, meta)
        wall_before, resumed_from = meta.get("wall_clock_s", 0.0), str(prev)
        log.info("resumed from %s at step %d", prev, unl.step)
    log_rows = _read_log(ckpt_dir / "log.csv", unl.step)
    if unl.step and len(log_rows) != unl.step:
        log.warning("log.csv holds %d rows for %d steps (rows of an earlier attempt were lost)", len(log_rows), unl.step)
    csv_log = _CsvLog(ckpt_dir / "log.csv", log_rows)

    t_start = time.perf_counter()

    def save(step_: int) -> None:
        d = step_dir(ckpt_dir, step_)
        # training wall-clock so far (across resumes): the x-axis of the wall-clock curves
        common = {"step": step_, "images_seen": step_ * unl.images_per_step, "config_hash": rhash,
                  "method": method, "seed": seed,
                  "wall_clock_s": round(wall_before + time.perf_counter() - t_start, 3)}
        save_generator(d / "generator_ema", unl.gen, ds.get("diffusion") or {}, common, unl.ema_state_dict())
        tensors, smeta = unl.state()
        io.save_checkpoint(d / "state", tensors, {**smeta, **common, "kind": "unlearn_state"})
        _prune_states(ckpt_dir, s["keep_states"])

    if prev is None:
        save(0)

    total = s["steps"] if max_steps is None else min(max_steps, s["steps"])
    bar = tqdm(total=total, initial=min(unl.step, total), desc=f"unlearn {method} seed{seed}", unit="it",
               mininterval=5, dynamic_ncols=True)
    try:
        while unl.step < total:
            row = unl.train_step()
            csv_log.write(row)
            bar.update(1)
            step = row["step"]
            if step % s["log_every"] == 0 or step == total:
                bar.set_postfix(psi=f"{row['loss_psi']:.3g}", theta=f"{row['loss_theta']:.3g}")
                log.info("step %d loss_psi %.4g (r %.4g f %.4g) loss_theta %.4g (r %.4g f %.4g) mask %.3f %.2fs/it",
                         step, row["loss_psi"], row["loss_psi_remember"], row["loss_psi_forget"], row["loss_theta"],
                         row["loss_theta_remember"], row["loss_theta_forget"], row["mask_density"], row["step_time_s"])
            if step % s["checkpoint_every"] == 0 or step == s["steps"]:
                save(step)
    finally:
        bar.close()
        csv_log.close()
    if unl.step < s["steps"]:
        return {"step": unl.step, "finished": False}

    wall = wall_before + time.perf_counter() - t_start
    prov = rec.finish(resumed_from=resumed_from, teacher=str(teacher_prefix), teacher_sha256=tmeta["sha256"])
    meta = {
        "method": method, "seed": seed, "dataset": dataset, "config_hash": rhash,
        "steps": unl.step, "step": unl.step, "images_seen": unl.step * unl.images_per_step,
        "wall_clock_s": round(wall, 3), "peak_memory": prov["memory"], "weights": "ema",
        "forget_class": s["forget_class"], "cover_class": s["cover_class"],
        "settings": s, "teacher": str(teacher_prefix), "teacher_sha256": tmeta["sha256"], "provenance": prov,
    }
    with io.atomic_path(out_dir / "log.csv") as tmp:
        shutil.copyfile(ckpt_dir / "log.csv", tmp)
    save_generator(out_dir / "generator_ema", unl.gen, ds.get("diffusion") or {}, meta, unl.ema_state_dict())
    return io.read_json(out_dir / "generator_ema.json")


def _mask_pool(s: dict, ds: dict, teacher, seed: int, device, data_dir) -> torch.Tensor | None:
    """Forget-class images for the saliency loss when its source is ``teacher`` or ``real``.

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

        gen = torch.Generator().manual_seed(seed + 7919)
        labels = torch.full((m["teacher_pool"],), fc, dtype=torch.long)
        ddpm = make_scheduler(ds.get("diffusion") or {})
        chunks = [sample_batch(teacher, ddpm, labels[i:i + 256], gen, "ddim", m["teacher_sampling_steps"]).cpu()
                  for i in range(0, len(labels), 256)]
        log.info("mask source teacher: drew %d DDIM samples of class %d", len(labels), fc)
        return torch.cat(chunks)
    return None
