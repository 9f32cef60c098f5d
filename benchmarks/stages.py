"""Each stage of the embedded DAG: measured cost per unit next to its bound (issue: speed).

    python benchmarks/stages.py [--config config/config.yaml] [--dataset mnist] [--threads 2]
                                [--stages data teacher ...] [--json out.json] [--scratch DIR]

Every stage runs the package's own code on the dataset of the config (its network, batch and
evaluation sizes; random weights where a trained model is not needed) and times one unit of it. The
bound is what the unit cannot avoid doing, timed the same way in the same process:

| stage            | unit     | measured                                     | bound                                      |
|------------------|----------|----------------------------------------------|--------------------------------------------|
| data             | image    | ``pecker.data.prepare`` of the whole source  | none (I/O and resize)                      |
| teacher          | step     | ``train_teacher``'s own ``sec_per_step`` log | forward + MSE + backward + Adam, same net  |
|                  |          | (a fresh run; median of windows); the loop's | and batch, median over as many steps as    |
|                  |          | extras apart: draw, clip, EMA; ``rest``      | the loop's timed windows                   |
| classifier       | batch    | ``train_classifier``, one epoch              | forward + CE + backward + Adam per batch   |
| inception        | image    | the extractor's ``features`` (resize incl.)  | the network alone on 299 px float input    |
| evaluate         | image    | the final-generator evaluation (class:       | one ``features`` pass over as many images, |
|                  |          | ``evaluate_model``; text: ``evaluate_prefix``| a fresh extractor (the evaluation builds   |
|                  |          | of a step-0 generator), per Inception image  | its own)                                   |
| sample_teacher   | image    | ``sample_batch`` (DDIM, config's steps)      | the UNet forwards it makes, bare           |
| unlearn_sfd      | iter     | ``Unlearner.train_step``                     | the network passes of an SFD iteration     |
| unlearn_pecker   | iter     | ``Unlearner.train_step`` (mask every step)   | the same plus the saliency fwd + bwd       |
| unlearn_sa,      | iter     | ``FineTuner.train_step`` on the objective    | the objective's loss, backward, gradient   |
| unlearn_salun,   |          | that ``run_baseline`` builds for the first   | edit (SalUn's mask) and optimiser step     |
| unlearn_esd      |          | method of that kind                          |                                            |

The bare SFD iteration: generator forward (no grad, B + Bf), fake-score forward + backward + Adam on
those samples, generator forward with grad, teacher and fake-score forwards on the noised samples,
one backward to the generator's parameters, Adam, all at the task's own conditions (so with the
guided score calls of a text task, two network passes each). Ratios above 1 are the loop's own
overhead.

A text (concept) dataset, e.g. ``--dataset fashion``, runs the same stages on its text-conditioned
UNet (random text states of the encoder's shape in the bare steps; the caption encoding is part of
the teacher loop's measured time) and its first ``sfd_*`` / ``pecker_*`` methods; its evaluation is
the concept one (task prompts, classifier, retained-prompt FID, attribute checks). Its teacher
samples are drawn through the diffusers pipeline inside the evaluation, so ``sample_teacher`` is not
a stage there. A baseline stage runs where the dataset has a method of its kind (the class half: SA,
SalUn; the concept half: ESD, SA); its teacher files hold random weights and what it computes once
before the loop (SA's replay, Fisher and surrogate samples) is shrunk (``BASELINE_INPUTS``), as it does
not change an iteration's cost.

Each stage runs in its own process (its own thread count, its peak RSS its own) on a scratch folder
that the data stage fills; run it alone on idle cores. No network is needed.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

from child import ROOT, run_child  # benchmarks/child.py (this script's folder is on sys.path)

STAGES = ("data", "teacher", "classifier", "inception", "evaluate", "sample_teacher", "unlearn_sfd",
          "unlearn_pecker", "unlearn_sa", "unlearn_salun", "unlearn_esd")
BASELINES = {"unlearn_sa": "sa", "unlearn_salun": "salun", "unlearn_esd": "esd"}


def _timeit(fn, reps: int, warmup: int = 1, stat=statistics.mean) -> float:
    """``stat`` (the mean) of the seconds of ``fn()`` over ``reps`` calls after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return stat(times)


def _row(stage: str, unit: str, measured: float, bound: float | None, note: str) -> dict:
    return {"stage": stage, "unit": unit, "measured_s": measured, "bound_s": bound,
            "ratio": measured / bound if bound else None, "note": note,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def default_stages(ds: dict) -> list[str]:
    """Every stage of the dataset's kind: a text dataset has no ``sample_teacher``, and a baseline
    stage runs where the dataset configures a method of that kind."""
    from pecker.unlearn.settings import method_kind

    kinds = {method_kind(ds["unlearn"], m) for m in ds["unlearn"]["methods"]}
    return [st for st in STAGES if not (st == "sample_teacher" and ds.get("text"))
            and (st not in BASELINES or BASELINES[st] in kinds)]


def _cfg(args):
    from pecker import config as C

    cfg = C.resolve([ROOT / p for p in args.config], args.set or [])
    return cfg, C.dataset_config(cfg, args.dataset)


def _condition(model, n: int, ds: dict):
    """A batch of ``n`` conditions for ``model``: random class labels, or (a text dataset) random text
    states of the encoder's shape ``(n, max_length, cross_attention_dim)``."""
    import torch

    from pecker.diffusion.conditioning import ClassCondition, TextCondition
    from pecker.diffusion.unet import null_label

    if ds.get("text"):
        return TextCondition(torch.randn(n, ds["text"]["max_length"], model.config.cross_attention_dim))
    return ClassCondition(torch.randint(0, ds["data"]["num_classes"], (n,)), null_label(model))


def _method(ds: dict, base: str) -> str:
    """``base`` (sfd / pecker) when the dataset has that method, else its first ``base_<task>`` one."""
    methods = ds["unlearn"]["methods"]
    if base in methods:
        return base
    found = [m for m in methods if m.startswith(f"{base}_")]
    if not found:
        raise SystemExit(f"datasets.*.unlearn.methods has neither {base!r} nor a {base}_<task> method")
    return found[0]


def _bare_teacher_step(model, opt, x, t, eps, cond, sched):
    import torch.nn.functional as F

    from pecker.diffusion.schedule import eps_pred

    loss = F.mse_loss(eps_pred(model, sched.noise(x, t, eps), t, cond), eps)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def stage_data(args, ds, scratch: Path) -> dict:
    from pecker.data import load_prepared
    from pecker.data.prepare import prepare

    t0 = time.perf_counter()
    prepare(ds["data"], scratch / "data", dataset=args.dataset)
    dt = time.perf_counter() - t0
    n = len(load_prepared(scratch / "data")[1])
    return _row("data", "image", dt / n, None, f"{n} images in {dt:.1f} s")


def stage_teacher(args, ds, scratch: Path) -> dict:
    """The loop's ``sec_per_step`` against the bare step, both over the same number of steps, and the
    loop's own work besides the bare step, each part timed on the run's own objects: the batch draw
    (:class:`pecker.diffusion.train.BatchDraw`, with the run's conditions, so a text teacher's caption
    table is encoded once), the grad-norm clip and the EMA update. What the parts do not explain is
    reported as ``rest``. Medians throughout (the loop's over its log windows of a sixth of the run,
    the first left out as warm-up; the others' over single calls), so that a stray slow step on a
    shared machine does not decide the ratio."""
    import csv
    import shutil

    import torch

    import pecker.diffusion.train as train
    from pecker.data import load_prepared
    from pecker.diffusion.schedule import Schedule, make_scheduler
    from pecker.diffusion.unet import build_unet

    steps, every = args.teacher_steps, max(args.teacher_steps // 6, 1)
    tcfg = {**ds["teacher"], "steps": steps, "log_every": every, "checkpoint_every": steps, "keep_checkpoints": 1}
    out = scratch / "teacher"
    shutil.rmtree(out, ignore_errors=True)  # a finished run left there would be resumed, not timed
    made = []
    make_conditions = train.make_conditions

    def keep(*a, **k):  # the run's own condition draw, for timing the batch draw below
        made.append(make_conditions(*a, **k))
        return made[-1]

    train.make_conditions = keep
    train.train_teacher({**ds, "teacher": tcfg}, scratch / "data", out, torch.device("cpu"), config_hash="bench")
    rows = list(csv.DictReader(open(out / "log.csv")))
    measured = statistics.median(float(r["sec_per_step"]) for r in rows[1:])  # first window: warm-up
    n = steps - every  # the steps of the windows timed

    torch.manual_seed(0)
    model = build_unet(ds["unet"], ds["data"]).train()
    opt = torch.optim.Adam(model.parameters(), lr=tcfg["lr"], betas=tuple(tcfg["adam_betas"]))
    sched = Schedule(make_scheduler(ds["diffusion"]), "cpu")
    b, d = tcfg["batch_size"], ds["data"]
    x = torch.randn(b, d["channels"], d["resolution"], d["resolution"])
    cond = _condition(model, b, ds)
    bare = _timeit(lambda: _bare_teacher_step(model, opt, x, torch.randint(0, sched.T, (b,)), torch.randn_like(x),
                                              cond, sched), n, 2, statistics.median)

    images, labels, _ = load_prepared(scratch / "data")
    draw = train.BatchDraw(torch.from_numpy(images), torch.from_numpy(labels), train.EpochSampler(len(labels), b, 0),
                           made[0][0], torch.Generator().manual_seed(1), sched.T, tcfg["hflip"], "cpu")
    ema = train.make_ema(model, tcfg)
    clip = lambda: torch.nn.utils.clip_grad_norm_(model.parameters(), tcfg["grad_clip"])  # noqa: E731
    parts = {"draw": _timeit(draw.next, n, 2, statistics.median),  # the bare series left gradients to clip
             "clip": _timeit(clip, n, 2, statistics.median),
             "ema": _timeit(lambda: ema.step(model.parameters()), n, 2, statistics.median)}
    rest = measured - bare - sum(parts.values())
    said = ", ".join(f"{k} {1000 * v:.1f}" for k, v in parts.items())
    return {**_row("teacher", "step", measured, bare, f"batch {b}; loop median of log windows 2-{len(rows)} ({every} "
                   f"steps each) of a {steps}-step run, bare over {n}; loop extras ms: {said}, rest {1000 * rest:.1f}"),
            "parts_s": parts, "rest_s": rest}


def stage_classifier(args, ds, scratch: Path) -> dict:
    import torch
    import torch.nn.functional as F

    from pecker.classifier.models import build_classifier, input_spec, preprocess
    from pecker.classifier.train import train_classifier
    from pecker.data import load_prepared

    ccfg = {**ds["classifier"], "epochs": 1}
    t0 = time.perf_counter()
    meta = train_classifier({**ds, "classifier": ccfg}, scratch / "data", scratch / "classifier", torch.device("cpu"))
    dt = time.perf_counter() - t0
    n_batches = -(-meta["n_train"] // ccfg["batch_size"])

    images, labels, _ = load_prepared(scratch / "data")
    d = ds["data"]
    spec = input_spec(ccfg["arch"], d["channels"], ccfg["input_size"])
    model = build_classifier(ccfg["arch"], spec["channels_in"], d["num_classes"], ccfg["width"], False).train()
    opt = torch.optim.Adam(model.parameters(), lr=ccfg["lr"], weight_decay=ccfg["weight_decay"])
    x = preprocess(images[:ccfg["batch_size"]], spec, "cpu")
    y = torch.from_numpy(labels[:ccfg["batch_size"]])

    def bare():
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return _row("classifier", "batch", dt / n_batches, _timeit(bare, args.reps * 3, 2),
                f"batch {ccfg['batch_size']}, {n_batches} batches + held-out pass + save in {dt:.1f} s")


def _extractor(ds):
    import torch

    from pecker.evaluate.features import build_extractor

    ecfg = ds["evaluate"]
    return build_extractor(ecfg["extractor"], device=torch.device("cpu"), inception_sha256=ecfg.get("inception_sha256"))


def stage_inception(args, ds, scratch: Path) -> dict:
    import numpy as np
    import torch

    from pecker.evaluate.features import INCEPTION_SIZE

    ext = _extractor(ds)
    bs = ds["evaluate"]["batch_size"]
    d = ds["data"]
    imgs = np.random.default_rng(0).integers(0, 256, (bs, d["resolution"], d["resolution"], d["channels"]), np.uint8)
    reps = max(args.reps // 3, 1)  # ~30 s per batch of 100 on 2 cores
    measured = _timeit(lambda: ext.features(imgs, batch_size=bs), reps) / bs
    x = torch.randn(bs, 3, INCEPTION_SIZE, INCEPTION_SIZE)
    with torch.inference_mode():
        bare = _timeit(lambda: ext.model(x), reps) / bs
    return _row("inception", "image", measured, bare, f"{ext.name}, batch {bs}, {d['resolution']} px -> 299 px")


def _inception_pass(ds, n: int) -> float:
    """Seconds per image of one ``features`` pass over ``n`` images of the dataset's shape by a fresh
    extractor (the evaluation builds its own, so its first batch is cold too)."""
    import numpy as np

    d, bs = ds["data"], ds["evaluate"]["batch_size"]
    imgs = np.zeros((n, d["resolution"], d["resolution"], d["channels"]), np.uint8)
    t0 = time.perf_counter()
    _extractor(ds).features(imgs, batch_size=bs)
    return (time.perf_counter() - t0) / n


def _evaluate_text(args, ds, scratch: Path) -> dict:
    """The concept evaluation of a final generator (step 0 of the first sfd method: the teacher's copy,
    as its cost does not depend on the weights), per retained-prompt image that goes through Inception."""
    import torch

    from pecker.diffusion.unet import build_unet, save_unet
    from pecker.evaluate import fidelity
    from pecker.evaluate.concept_run import evaluate_prefix, fid_classes
    from pecker.evaluate.run import reference_images
    from pecker.unlearn.trainer import run_unlearning

    torch.manual_seed(0)
    save_unet(scratch / "text_teacher", build_unet(ds["unet"], ds["data"]), {"kind": "teacher"})
    method = _method(ds, "sfd")
    run_unlearning(args.cfg, args.dataset, method, 0, scratch / "text_teacher", scratch / "gen", init_only=True)
    ecfg, ccfg = ds["evaluate"], ds["evaluate"]["concept"]
    keep = fid_classes(ds)
    ext = _extractor(ds)
    cache = scratch / "reference.npz"
    ref, _ = reference_images(scratch / "data", keep, ecfg["reference_max_per_class"])
    fidelity.reference_features(ref, ext, cache, batch_size=ecfg["batch_size"])  # cached, as in the DAG
    t0 = time.perf_counter()
    evaluate_prefix(ds, args.dataset, "generator", scratch / "gen" / "generator_ema",
                    classifier_prefix=scratch / "classifier", data_dir=scratch / "data", results_dir=scratch,
                    device=torch.device("cpu"), final=True, reference_cache=cache)
    dt = time.perf_counter() - t0
    n_inc = ccfg["fid_per_class"] * len(keep)
    one_pass = _inception_pass(ds, n_inc)
    return _row("evaluate", "image", dt / n_inc, one_pass,
                f"final generator of {method}: task prompts, {n_inc} retained-prompt images for FID, attribute "
                f"checks in {dt:.1f} s (reference features cached)")


def stage_evaluate(args, ds, scratch: Path) -> dict:
    import torch

    from pecker.diffusion.schedule import Schedule, make_scheduler
    from pecker.diffusion.unet import build_unet
    from pecker.evaluate import fidelity
    from pecker.evaluate.run import config_task, evaluate_model, model_drawer, reference_images, retained_classes
    from pecker.unlearn.generator import OneStepGenerator, save_generator

    if not (scratch / "classifier.json").is_file():
        sys.exit("evaluate needs the classifier stage's model: run it first (same --scratch)")
    if ds.get("text"):
        return _evaluate_text(args, ds, scratch)
    torch.manual_seed(0)
    unet = build_unet(ds["unet"], ds["data"])
    gen = OneStepGenerator(unet, Schedule(make_scheduler(ds["diffusion"]), "cpu"), ds["unlearn"]["t_init"])
    save_generator(scratch / "generator", gen, ds["diffusion"])
    ecfg = ds["evaluate"]
    fc, _ = config_task(ds)
    keep = retained_classes(ds["data"]["num_classes"], fc)
    ext = _extractor(ds)
    cache = scratch / "reference.npz"
    ref, _ = reference_images(scratch / "data", keep, ecfg["reference_max_per_class"])
    fidelity.reference_features(ref, ext, cache, batch_size=ecfg["batch_size"])  # cached, as in the DAG
    draw, _ = model_drawer("generator", scratch / "generator", ds, torch.device("cpu"))
    t0 = time.perf_counter()
    evaluate_model(ds, args.dataset, draw, classifier_prefix=scratch / "classifier", data_dir=scratch / "data",
                   results_dir=scratch, device=torch.device("cpu"), final=True, reference_cache=cache)
    dt = time.perf_counter() - t0
    n_inc = ecfg["per_class"] * len(keep)
    one_pass = _inception_pass(ds, n_inc)
    return _row("evaluate", "image", dt / n_inc, one_pass,
                f"final generator: {n_inc} retained + {ecfg['n_forget']} forget samples in {dt:.1f} s "
                "(reference features cached)")


def _forward_profile(model, fn) -> list[tuple[int, bool]]:
    """``(batch, grad enabled)`` of every forward call ``fn()`` makes to ``model``."""
    import torch

    calls = []
    h = model.register_forward_hook(lambda m, a, k, o: calls.append((len(a[0]), torch.is_grad_enabled())),
                                    with_kwargs=True)
    try:
        fn()
    finally:
        h.remove()
    return calls


def stage_sample_teacher(args, ds, scratch: Path) -> dict:
    import torch

    from pecker.diffusion.sample import sample_batch
    from pecker.diffusion.schedule import make_scheduler
    from pecker.diffusion.unet import build_unet

    if ds.get("text"):
        sys.exit("sample_teacher: a text dataset's teacher samples through the diffusers pipeline inside the "
                 "evaluation stage (not a stage of its own)")
    torch.manual_seed(0)
    unet = build_unet(ds["unet"], ds["data"]).eval()
    ddpm = make_scheduler(ds["diffusion"])
    s = ds["evaluate"]["teacher_sampler"]
    n, d = ds["evaluate"]["batch_size"], ds["data"]
    labels = torch.randint(0, d["num_classes"], (n,))
    run = lambda: sample_batch(unet, ddpm, labels, torch.Generator().manual_seed(0), s["sampler"], s["steps"],  # noqa: E731
                               s.get("guidance_scale"))
    calls = _forward_profile(unet, run)
    measured = _timeit(run, max(args.reps // 2, 1)) / n
    z = torch.randn(calls[0][0], d["channels"], d["resolution"], d["resolution"])
    cond = _condition(unet, len(z), ds)
    t = torch.full((len(z),), 500)
    with torch.no_grad():
        one = _timeit(lambda: cond.call(unet, z, t), args.reps)
    return _row("sample_teacher", "image", measured, one * len(calls) / n,
                f"{s['sampler']}-{s['steps']}, batch {n}: {len(calls)} UNet calls of batch {calls[0][0]}")


def stage_unlearn(args, ds, scratch: Path, base: str) -> dict:
    import torch

    from pecker.diffusion.conditioning import cat
    from pecker.diffusion.schedule import eps_pred, x0_pred
    from pecker.diffusion.unet import build_unet
    from pecker.unlearn.settings import method_settings
    from pecker.unlearn.trainer import Unlearner, make_task

    method = _method(ds, base)
    s = method_settings(ds["unlearn"], method, args.dataset)
    if s["mask"]["enabled"]:
        s = {**s, "mask": {**s["mask"], "refresh": "every_step"}}
    torch.manual_seed(0)
    teacher = build_unet(ds["unet"], ds["data"])
    task, _ = make_task(s, ds, teacher, "cpu", f"datasets.{args.dataset}.unlearn")
    unl = Unlearner(teacher, ds["diffusion"], s, task, 0, "cpu")
    measured = _timeit(unl.train_step, args.reps, 1)

    gen, psi, sched = unl.gen, unl.psi, unl.sched
    n, nf = s["batch_size"] + s["forget_batch_size"], s["forget_batch_size"]
    adam = dict(betas=tuple(s["adam_betas"]), eps=s["adam_eps"])
    opt_g = torch.optim.Adam(gen.unet.parameters(), lr=s["lr_theta"], **adam)
    opt_p = torch.optim.Adam(psi.parameters(), lr=s["lr_psi"], **adam)
    c_r, c_f, _ = unl.draw_conditions()  # the task's own conditions (and guidance), drawn once
    cond = cat([c_r, c_f])
    noise = lambda m: torch.randn(m, *gen.image_shape)  # noqa: E731
    tt = lambda m: torch.randint(s["t_min"], s["t_max"], (m,))  # noqa: E731

    def bare():
        with torch.no_grad():
            x = gen(noise(n), cond)
        t, eps = tt(n), noise(n)
        loss = (x0_pred(psi.train().requires_grad_(True), sched, sched.noise(x, t, eps), t, cond) - x).square().mean()
        opt_p.zero_grad(set_to_none=True)
        loss.backward()
        opt_p.step()
        if s["mask"]["enabled"]:  # saliency: gradient of the generator's denoising loss on forget samples
            t_f, e_f = tt(nf), noise(nf)
            sal = eps_pred(gen.unet, sched.noise(x[n - nf:], t_f, e_f), t_f, c_f) - e_f
            torch.autograd.grad(sal.square().mean(), list(gen.unet.parameters()))
        psi.eval().requires_grad_(False)
        x = gen(noise(n), cond)
        t, eps = tt(n), noise(n)
        z = sched.noise(x, t, eps)
        q = x0_pred(unl.teacher, sched, z, t, cond) - x0_pred(psi, sched, z, t, cond)
        opt_g.zero_grad(set_to_none=True)
        (q * (x - q)).mean().backward()
        opt_g.step()

    bound = _timeit(bare, args.reps, 1)
    return _row(f"unlearn_{base}", "iter", measured, bound,
                f"{method}, batch {s['batch_size']}+{nf}" + (", mask every step" if s["mask"]["enabled"] else ""))

# What a baseline computes once before its loop (replay, Fisher, surrogate samples) does not change the
# cost of an iteration, so the benchmark shrinks it (merged into the method's entry). Keyed by
# (kind, text dataset?).
_FISHER = {"n_samples": 4, "timesteps": 2, "t_batch": 2}
BASELINE_INPUTS = {("sa", False): {"replay": {"per_class": 4}, "fisher": _FISHER},
                   ("sa", True): {"replay": {"prompts": 4, "per_prompt": 1}, "surrogate": {"n": 8}, "fisher": _FISHER}}


def stage_baseline(args, ds, scratch: Path, kind: str) -> dict:
    """One iteration of the fine-tuning loop shared by the baselines (``FineTuner.train_step``) on the
    dataset's first method of ``kind``, built by ``run_baseline`` itself from random-weight teacher files;
    bound: the objective's loss, backward, its gradient edit (SalUn's mask) and the optimiser step."""
    import torch

    import pecker.unlearn.baselines as baselines
    import pecker.unlearn.baselines.finetune as finetune
    from pecker.config import deep_merge
    from pecker.diffusion.unet import build_unet, save_unet
    from pecker.unlearn.settings import method_kind

    methods = ds["unlearn"]["methods"]
    found = [m for m in methods if method_kind(ds["unlearn"], m) == kind]
    if not found:
        raise SystemExit(f"datasets.{args.dataset}.unlearn.methods has no method of kind {kind!r}")
    method = found[0]
    # into args.cfg's own entry: run_baseline reads it there
    methods[method] = deep_merge(methods[method], BASELINE_INPUTS.get((kind, bool(ds.get("text"))), {}))

    torch.manual_seed(0)
    prefix = scratch / f"baseline_teacher_{kind}"
    save_unet(prefix, build_unet(ds["unet"], ds["data"]), {"kind": "teacher"})
    caught = {}

    def catch(tuner, objective, *_, **__):  # stands in for run_finetune: the loop's parts, no run
        caught.update(tuner=tuner, objective=objective)
        return {"finished": False}

    baselines.run_finetune = finetune.run_finetune = catch
    baselines.run_baseline(args.cfg, args.dataset, method, 0, scratch / f"baseline_{method}", teacher_prefix=prefix,
                           teacher_raw_prefix=prefix, data_dir=scratch / "data")
    tuner, objective = caught["tuner"], caught["objective"]
    # both series see the same draws (ESD's cost depends on the DDIM stop step it draws)
    rng0, torch_rng0 = tuner.rng.get_state(), torch.get_rng_state()
    measured = _timeit(lambda: tuner.train_step(objective), args.reps, 1)
    tuner.rng.set_state(rng0)
    torch.set_rng_state(torch_rng0)

    def bare():
        loss, _ = objective.loss(tuner.model, tuner.rng)
        tuner.opt.zero_grad(set_to_none=True)
        loss.backward()
        objective.edit_gradients(tuner.params)
        tuner.opt.step()

    bound = _timeit(bare, args.reps, 1)
    return _row(f"unlearn_{kind}", "iter", measured, bound,
                f"{method}, batch {tuner.s['batch_size']}, {objective.images_per_step} images per step")


RUN = {"data": stage_data, "teacher": stage_teacher, "classifier": stage_classifier, "inception": stage_inception,
       "evaluate": stage_evaluate, "sample_teacher": stage_sample_teacher,
       "unlearn_sfd": lambda a, d, s: stage_unlearn(a, d, s, "sfd"),
       "unlearn_pecker": lambda a, d, s: stage_unlearn(a, d, s, "pecker"),
       **{st: (lambda a, d, s, k=kind: stage_baseline(a, d, s, k)) for st, kind in BASELINES.items()}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", nargs="+", default=["config/config.yaml"])
    ap.add_argument("--set", nargs="*", help="config overrides key=value")
    ap.add_argument("--dataset", default="mnist")
    ap.add_argument("--stages", nargs="+", choices=STAGES, default=None,
                    help="default: every stage of the dataset's kind (a text dataset has no sample_teacher)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=6, help="timed repetitions per bound (loops: see each stage)")
    ap.add_argument("--teacher-steps", type=int, default=60)
    ap.add_argument("--scratch", type=Path, default=None, help="working folder (default: a temporary one)")
    ap.add_argument("--json", type=Path, default=None, help="also write the rows here")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.one:
        import torch

        torch.set_num_threads(args.threads)
        args.cfg, ds = _cfg(args)
        print(json.dumps(RUN[args.one](args, ds, args.scratch)))
        return

    if args.stages is None:
        args.stages = default_stages(_cfg(args)[1])
    with tempfile.TemporaryDirectory(prefix="pecker-stages-") as tmp:
        scratch = args.scratch or Path(tmp)
        stages = list(args.stages)
        if "data" not in stages and not (scratch / "data" / "train.npz").is_file():
            stages.insert(0, "data")
        if "evaluate" in stages and "classifier" not in stages and not (scratch / "classifier.json").is_file():
            stages.insert(stages.index("evaluate"), "classifier")
        rows = []
        for st in stages:
            cmd = [sys.executable, __file__, *sys.argv[1:], "--one", st, "--scratch", str(scratch)]
            t0 = time.perf_counter()
            rows.append(run_child(cmd, f"stage {st}"))
            print(f"  done {st} in {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)

    print(f"dataset {args.dataset} ({', '.join(args.config)}), {args.threads} threads, CPU")
    print(f"{'stage':15} {'unit':6} {'measured s':>11} {'bound s':>9} {'ratio':>6} {'RSS MB':>7}  note")
    for r in rows:
        bound = f"{r['bound_s']:9.4f}" if r["bound_s"] else f"{'-':>9}"
        ratio = f"{r['ratio']:6.2f}" if r["ratio"] else f"{'-':>6}"
        print(f"{r['stage']:15} {r['unit']:6} {r['measured_s']:11.4f} {bound} {ratio} {r['peak_rss_mb']:7.0f}  "
              f"{r['note']}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
