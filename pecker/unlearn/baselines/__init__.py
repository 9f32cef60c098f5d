"""The baselines on the multi-step model (docs/method.md section 5): Retrain, SA and SalUn (Table 1)
and ESD-x / ESD-u (Tables 2-3, :mod:`pecker.unlearn.baselines.esd`).

:func:`run_baseline` is what ``pecker unlearn --method <name>`` runs for a method of kind ``retrain``,
``sa``, ``salun`` or ``esd``; SFD-Two-Stage is the SFD loop itself (:mod:`pecker.unlearn.trainer`). Every
baseline writes ``OUT/unet.safetensors + .json`` (the weights the evaluation samples with
``evaluate.teacher_sampler``), ``OUT/log.csv`` and resumable states under ``OUT/ckpt`` through the
one run-folder helper (:mod:`pecker.runs`); the sidecar records the task (``forget`` / ``cover``),
``data_free`` and the settings.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from pecker.config import ConfigError, dataset_config
from pecker.diffusion.conditioning import ClassCondition
from pecker.diffusion.schedule import Schedule, make_scheduler
from pecker.diffusion.unet import load_unet, n_params, null_label
from pecker.provenance import Recorder
from pecker.runs import RunFolder
from pecker.unlearn.baselines.finetune import FINAL, FineTuner, run_finetune
from pecker.unlearn.settings import DATA_FREE, method_settings
from pecker.unlearn.task import ClassForgetting
from pecker.workflow import ds_stage_hash

log = logging.getLogger("pecker.unlearn.baselines")


def _hflip(s: dict, ds: dict) -> bool:
    return ds["teacher"].get("hflip", False) if s.get("hflip") is None else bool(s["hflip"])


def run_baseline(cfg: dict, dataset: str, method: str, seed: int, out_dir: str | Path, device="cpu",
                 teacher_prefix: str | Path | None = None, teacher_raw_prefix: str | Path | None = None,
                 data_dir: str | Path | None = None, max_steps: int | None = None) -> dict:
    """Run (or resume) one baseline run; returns the final ``unet`` sidecar (or ``{"finished": False}``)."""
    ds = dataset_config(cfg, dataset)
    s = method_settings(ds["unlearn"], method, dataset, ds.get("teacher"))
    kind, device = s["kind"], torch.device(device)
    chash = ds_stage_hash(ds, "unlearn", method=method, seed=seed, dataset=dataset)
    if kind == "esd":
        from pecker.unlearn.baselines.esd import run_esd

        if teacher_prefix is None:
            raise ConfigError(f"method {method!r} (kind esd) needs --teacher")
        return run_esd(ds, dataset, method, seed, s, out_dir, device, teacher_prefix, chash, max_steps)
    meta = {"method": method, "seed": seed, "dataset": dataset, "config_hash": chash, "data_free": DATA_FREE[kind],
            "forget_class": s["forget_class"], "cover_class": s["cover_class"],
            # what the evaluation checks (the same record as the SFD loop's task; these methods use no cover)
            **ClassForgetting(ds["data"]["num_classes"], s["forget_class"], s["cover_class"]).describe()}
    need = {"retrain": ("data",), "sa": ("teacher", "teacher_raw"), "salun": ("teacher_raw", "data")}[kind]
    given = {"data": data_dir, "teacher": teacher_prefix, "teacher_raw": teacher_raw_prefix}
    missing = [k for k in need if given[k] is None]
    if missing:
        flags = {"data": "--data", "teacher": "--teacher", "teacher_raw": "--teacher-raw"}
        raise ConfigError(f"method {method!r} (kind {kind}) needs {', '.join(flags[k] for k in missing)}")

    if kind == "retrain":
        from pecker.diffusion.train import train_teacher

        tcfg = {**s, "seed": int(seed)}
        return train_teacher(ds, data_dir, out_dir, device, max_steps, tcfg=tcfg, exclude_class=s["forget_class"],
                             config_hash=chash, what=f"retrain seed{seed}", names=(f"{FINAL}_raw", FINAL),
                             extra_meta={**meta, "kind": "diffusion_model", "settings": s})

    run = RunFolder(out_dir, chash, f"unlearn {method} seed {seed}", keep=s["keep_states"],
                    hint=f"lower config key 'datasets.{dataset}.unlearn.methods.{method}.lr'")
    rec = Recorder("unlearn", chash, seeds={"unlearn": seed}, method=method, dataset=dataset)
    model, raw_meta = load_unet(teacher_raw_prefix, device=device)
    inputs = {"teacher_raw_sha256": raw_meta["sha256"]}
    sched = Schedule(make_scheduler(ds["diffusion"]), device)
    null, fc, k = null_label(model), s["forget_class"], ds["data"]["num_classes"]
    names = [n for n, _ in model.named_parameters()]
    log.info("unlearn %s (kind %s) seed %d on %s: %s parameters, device %s, config hash %s", method, kind, seed,
             dataset, f"{n_params(model):,}", device, chash)

    if kind == "sa":
        from pecker.unlearn.baselines.sa import SelectiveAmnesia, draw_replay, fisher_diagonal, fisher_subset

        ema_teacher, ema_meta = load_unet(teacher_prefix, device=device)
        inputs["teacher_sha256"] = ema_meta["sha256"]

        def compute():
            images, labels = draw_replay(ema_teacher, make_scheduler(ds["diffusion"]), k, s["replay"], seed)
            f = s["fisher"]
            idx = fisher_subset(len(images), labels, f["n_samples"])
            x = images[idx].to(device)
            if f["input_range"] == "zero_one":  # the official code's [0, 1] inputs, as an option
                x = (x + 1) / 2
            gen = torch.Generator().manual_seed(seed + 1)
            ts = (lambda: torch.arange(sched.T)) if f["timesteps"] is None else (
                lambda: torch.randperm(sched.T, generator=gen)[:f["timesteps"]])
            model.eval()
            fisher = fisher_diagonal(model, sched, x, ClassCondition(labels[idx].to(device), null),
                                     lambda shape: torch.randn(shape, generator=gen), ts, f["t_batch"])
            log.info("SA: replay %d samples, Fisher over %d (mean %.3g)", len(images), len(idx),
                     float(torch.cat([v.flatten() for v in fisher]).mean()))
            tensors = {"replay.images": images, "replay.labels": labels,
                       **{f"fisher.{n}": v for n, v in zip(names, fisher)}}
            return tensors, {"kind": "sa_inputs", "n_replay": len(images), "n_fisher": len(idx)}

        pre, _ = run.cached("inputs", compute, expect=inputs, device=str(device))
        images, labels = pre["replay.images"], pre["replay.labels"]
        keep = labels != fc
        star = [p.detach().clone() for p in model.parameters()]
        objective = SelectiveAmnesia(s, sched, images[keep].to(device), labels[keep].to(device), star,
                                     [pre[f"fisher.{n}"] for n in names], fc, null, _hflip(s, ds))
        ema_init = dict(ema_teacher.named_parameters())
        del ema_teacher
    else:  # salun
        from pecker.data import load_prepared, to_model_range
        from pecker.unlearn.baselines.salun import SalUn, salun_mask
        from pecker import io

        imgs, labs, _ = load_prepared(data_dir)
        inputs["data_sha256"] = io.sha256_file(Path(data_dir) / "train.npz")
        x_all, y_all = to_model_range(imgs).to(device), torch.from_numpy(labs).to(device)

        def compute():
            gen = torch.Generator().manual_seed(seed + 1)
            masks = salun_mask(model, sched, x_all[y_all == fc], fc, null, s["mask"], gen, _hflip(s, ds),
                               s["antithetic"])
            dens = sum(int(m.sum()) for m in masks) / sum(m.numel() for m in masks)
            log.info("SalUn: mask over %d forget images, density %.3f", int((y_all == fc).sum()), dens)
            return {f"mask.{n}": m for n, m in zip(names, masks)}, {"kind": "salun_mask", "density": dens}

        pre, _ = run.cached("inputs", compute, expect=inputs, device=str(device))
        objective = SalUn(s, sched, x_all, y_all, fc, k, null, [pre[f"mask.{n}"] for n in names], _hflip(s, ds))
        ema_init = None

    tuner = FineTuner(model, s, seed, ema_init)
    return run_finetune(tuner, objective, run, rec, meta, inputs, max_steps)
