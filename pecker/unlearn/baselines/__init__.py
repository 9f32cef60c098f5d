"""The baselines on the multi-step model (docs/method.md section 5): Retrain, SA and SalUn (Table 1)
and ESD-x / ESD-u and SA (Tables 2-3, :mod:`pecker.unlearn.baselines.esd`, :func:`run_text_sa`).

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
                 data_dir: str | Path | None = None, max_steps: int | None = None,
                 fisher_prefix: str | Path | None = None) -> dict:
    """Run (or resume) one baseline run; returns the final ``unet`` sidecar (or ``{"finished": False}``).
    ``fisher_prefix``: SA's released Fisher, converted (text datasets, ``fisher.released``)."""
    ds = dataset_config(cfg, dataset)
    s = method_settings(ds["unlearn"], method, dataset, ds.get("teacher"))
    kind, device = s["kind"], torch.device(device)
    chash = ds_stage_hash(ds, "unlearn", method=method, seed=seed, dataset=dataset)
    if kind == "esd":
        from pecker.unlearn.baselines.esd import run_esd

        if teacher_prefix is None:
            raise ConfigError(f"method {method!r} (kind esd) needs --teacher")
        return run_esd(ds, dataset, method, seed, s, out_dir, device, teacher_prefix, chash, max_steps)
    if ds.get("text"):
        if kind != "sa":
            raise ConfigError(f"method {method!r} (kind {kind}) forgets a class; a text dataset runs kinds sfd, esd, sa")
        if teacher_prefix is None or teacher_raw_prefix is None:
            raise ConfigError(f"method {method!r} (kind sa) needs --teacher and --teacher-raw")
        released = (s.get("fisher") or {}).get("released")
        if bool(released) != (fisher_prefix is not None):
            raise ConfigError(f"method {method!r}: config key 'datasets.{dataset}.unlearn.methods.{method}.fisher.released' "
                              f"is {released!r} but --fisher {'is missing' if released else 'was given'} (rule "
                              "convert_sa_fisher converts the released file; pass its output)")
        return run_text_sa(ds, dataset, method, seed, s, out_dir, torch.device(device), teacher_prefix,
                           teacher_raw_prefix, chash, max_steps, fisher_prefix)
    if fisher_prefix is not None:
        raise ConfigError(f"method {method!r}: --fisher (SA's released Stable Diffusion Fisher) is for text datasets")
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
        from pecker.unlearn.baselines.sa import SelectiveAmnesia, draw_replay, fisher_diagonal, fisher_subset, tensor_mean

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
            model.eval()
            fisher = fisher_diagonal(model, sched, x, ClassCondition(labels[idx].to(device), null),
                                     lambda shape: torch.randn(shape, generator=gen),
                                     _fisher_timesteps(f, sched.T, gen), f["t_batch"], s.get("loss_reduction") or "sum")
            log.info("SA: replay %d samples, Fisher over %d (mean %.3g)", len(images), len(idx), tensor_mean(fisher))
            tensors = {"replay.images": images, "replay.labels": labels,
                       **{f"fisher.{n}": v for n, v in zip(names, fisher)}}
            return tensors, {"kind": "sa_inputs", "n_replay": len(images), "n_fisher": len(idx)}

        pre, _ = run.cached("inputs", compute, expect=inputs, device=str(device))
        images, labels = pre["replay.images"], pre["replay.labels"]
        keep = labels != fc
        star = [p.detach().clone() for p in model.parameters()]
        objective = SelectiveAmnesia.for_classes(s, sched, images[keep].to(device), labels[keep].to(device), star,
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


def _fisher_timesteps(f: dict, T: int, gen: torch.Generator):
    """SA's Fisher timesteps: all ``T``, or ``f["timesteps"]`` distinct ones per sample."""
    if f["timesteps"] is None:
        return lambda: torch.arange(T)
    return lambda: torch.randperm(T, generator=gen)[:f["timesteps"]]


def run_text_sa(ds: dict, dataset: str, method: str, seed: int, s: dict, out_dir, device, teacher_prefix,
                teacher_raw_prefix, chash: str, max_steps: int | None = None, fisher_prefix=None) -> dict:
    """SA on a text-to-image UNet (:mod:`pecker.unlearn.baselines.sa`, the Stable Diffusion recipe):
    replay and surrogate samples of the EMA teacher, the Fisher at the raw teacher over the replay (or
    SA's released one, converted: ``fisher_prefix``, :mod:`pecker.unlearn.baselines.sa_fisher`), then
    the shared fine-tuning loop from the raw teacher (EMA from the teacher's EMA when ``ema_decay`` > 0)."""
    from pecker.diffusion.conditioning import TextCondition
    from pecker.text.stack import PromptEncoder, build_stack
    from pecker.unlearn.baselines.esd import esd_concept, trained_parameter
    from pecker.unlearn.baselines.sa import (SelectiveAmnesia, Surrogate, draw_text_samples, fisher_diagonal,
                                             fisher_subset, tensor_mean)
    from pecker.unlearn.baselines.sa_fisher import load_fisher
    from pecker.unlearn.task import concept_prompts

    where = f"datasets.{dataset}.unlearn.methods.{method}"
    s = {**s, "loss_reduction": s.get("loss_reduction") or "mean"}  # the latent-diffusion code's mean
    task = ds["unlearn"]["tasks"][s["task"]]  # the config check (pecker.config) named a task and a surrogate
    sets = concept_prompts(task, ds["text"], f"datasets.{dataset}.unlearn.tasks.{s['task']}")
    rcfg, f = s["replay"], s["fisher"]
    retain = sets["retain"][:rcfg["prompts"]] if rcfg["prompts"] else sets["retain"]
    forget = list(s["forget_prompts"] or [esd_concept(task, s)])
    surrogate = s["surrogate"]["prompt"] or task["override"]
    model, raw_meta = load_unet(teacher_raw_prefix, device=device)
    ema_teacher, ema_meta = load_unet(teacher_prefix, device=device)
    ddpm = make_scheduler(ds["diffusion"])
    sched = Schedule(ddpm, device)
    stack = build_stack(ds["text"], ds["data"]).to(device)
    enc = PromptEncoder(stack, model, ddpm, device)
    cfg = model.config
    shape = (cfg.in_channels, cfg.sample_size, cfg.sample_size)
    names = [n for n, _ in model.named_parameters()]
    labels = torch.arange(len(retain)).repeat_interleave(rcfg["per_prompt"])
    inputs = {"teacher_raw_sha256": raw_meta["sha256"], "teacher_sha256": ema_meta["sha256"],
              "text_encoder": stack.describe(), "replay_prompts_sha256": enc.fingerprint(retain),
              "forget_prompts": forget, "surrogate_prompt": surrogate}
    if fisher_prefix is not None:
        from pecker.io import read_sidecar

        inputs["fisher_sha256"] = read_sidecar(Path(fisher_prefix).with_suffix(".json"))["sha256"]
    run = RunFolder(out_dir, chash, f"unlearn {method} seed {seed}", keep=s["keep_states"],
                    hint=f"lower config key '{where}.lr'")
    log.info("unlearn %s (kind sa, text) seed %d on %s: %d replay samples of %d retain prompts, %d surrogate "
             "samples of %r under %s, train %s, config hash %s", method, seed, dataset, len(labels), len(retain),
             s["surrogate"]["n"], surrogate, forget, s["train"], chash)

    def compute():
        ema_teacher.eval()
        pipe = stack.pipeline(ema_teacher, ddpm)
        replay = draw_text_samples(pipe, [retain[i] for i in labels.tolist()], rcfg, seed, shape, device, "SA replay")
        sur = draw_text_samples(pipe, [surrogate] * s["surrogate"]["n"], rcfg, seed + 2, shape, device, "SA surrogate")
        if fisher_prefix is not None:
            fisher, fmeta = load_fisher(fisher_prefix, model, device)
            n_fisher = f"released ({fmeta['origin']['file']})"
        else:
            idx = fisher_subset(len(replay), labels, f["n_samples"])
            gen = torch.Generator().manual_seed(seed + 1)
            h = enc.encode(retain)
            model.eval()
            fisher = fisher_diagonal(model, sched, replay[idx].to(device), TextCondition(h[labels[idx]].to(device)),
                                     lambda sh: torch.randn(sh, generator=gen), _fisher_timesteps(f, sched.T, gen),
                                     f["t_batch"], s["loss_reduction"])
            n_fisher = len(idx)
        log.info("SA: replay %d samples, surrogate %d, Fisher over %s (mean %.3g)", len(replay), len(sur), n_fisher,
                 tensor_mean(fisher))
        tensors = {"replay.images": replay, "replay.labels": labels, "surrogate.images": sur,
                   **{f"fisher.{n}": v for n, v in zip(names, fisher)}}
        return tensors, {"kind": "sa_inputs", "n_replay": len(replay), "n_fisher": n_fisher, "n_surrogate": len(sur)}

    pre, _ = run.cached("inputs", compute, expect=inputs, device=str(device))
    h_replay = enc.encode(retain).to(device)[pre["replay.labels"].to(device)]
    star = [p.detach().clone() for p in model.parameters()]
    trained = [trained_parameter(n, s["train"]) for n in names]
    objective = SelectiveAmnesia(s, sched, pre["replay.images"].to(device), TextCondition(h_replay), star,
                                 [pre[f"fisher.{n}"] for n in names],
                                 Surrogate(pre["surrogate.images"].to(device), enc.encode(forget)), hflip=False,
                                 trained=None if s["train"] == "full" else trained)
    ema_init = dict(ema_teacher.named_parameters()) if s["ema_decay"] > 0 else None
    del ema_teacher
    n_trained = sum(p.numel() for p, keep in zip(model.parameters(), trained) if keep)
    meta = {"method": method, "seed": seed, "dataset": dataset, "config_hash": chash, "data_free": True,
            "forget": {"type": "text", "task": s["task"], "concept": esd_concept(task, s)},
            "sa": {"train": s["train"], "n_trained_parameters": n_trained, "forget_prompts": forget,
                   "loss_reduction": s["loss_reduction"],
                   "fisher": "released: " + f["released"] if fisher_prefix is not None else "computed at the raw teacher",
                   "surrogate_prompt": surrogate, "samples": "pipeline latents"}}
    rec = Recorder("unlearn", chash, seeds={"unlearn": seed}, method=method, dataset=dataset)
    tuner = FineTuner(model, s, seed, ema_init)
    return run_finetune(tuner, objective, run, rec, meta, inputs, max_steps)
