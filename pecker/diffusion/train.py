"""Teacher training (docs/method.md section 2): epsilon-prediction DDPM with label dropout and EMA.

Run layout under ``out_dir`` (``results/{dataset}/teacher``; the run folder is :mod:`pecker.runs`)::

    ckpt/step0000500/state.safetensors + .json   resumable training state (model, EMA, Adam, RNGs, sampler)
    ckpt/log.csv                                 running log, one row per ``log_every`` steps
    model.safetensors + .json                    final raw weights
    ema.safetensors + .json                      final EMA weights (what every later stage uses)
    log.csv                                      the final log

A run restarted with the same config resumes from the newest state and ends bit-identical to an
uninterrupted run on CPU; a state written under another config hash or data file is refused
(:class:`pecker.runs.ResumeRefused`), never overwritten.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers.training_utils import EMAModel
from tqdm import tqdm

from pecker import io
from pecker.config import ConfigError
from pecker.data import load_prepared, to_model_range
from pecker.diffusion.conditioning import ClassCondition
from pecker.diffusion.precision import Precision
from pecker.diffusion.schedule import Schedule, eps_pred, make_scheduler
from pecker.diffusion.unet import build_unet, n_params, null_label, save_unet
from pecker.provenance import Recorder
from pecker.runs import RunFolder, seed_all
from pecker.workflow import ds_stage_hash

log = logging.getLogger("pecker.teacher")

LOG_FIELDS = ["step", "images_seen", "loss", "grad_norm", "lr", "ema_decay", "sec_per_step"]


class EpochSampler:
    """Shuffled epochs over ``n`` items, driven by its own generator; state is saveable."""

    def __init__(self, n: int, batch_size: int, seed: int):
        self.n, self.batch_size = n, batch_size
        self.gen = torch.Generator().manual_seed(seed)
        self.perm = torch.randperm(n, generator=self.gen)
        self.pos = 0

    def next(self) -> torch.Tensor:
        out = []
        need = self.batch_size
        while need:
            if self.pos >= self.n:
                self.perm, self.pos = torch.randperm(self.n, generator=self.gen), 0
            take = min(need, self.n - self.pos)
            out.append(self.perm[self.pos:self.pos + take])
            self.pos += take
            need -= take
        return torch.cat(out)

    def state(self) -> dict[str, torch.Tensor]:
        return {"sampler.perm": self.perm, "sampler.pos": torch.tensor(self.pos), "sampler.gen": self.gen.get_state()}

    def load(self, t: dict[str, torch.Tensor]) -> None:
        self.perm, self.pos = t["sampler.perm"].clone(), int(t["sampler.pos"])
        self.gen.set_state(t["sampler.gen"])


class LabelConditions:
    """Class labels with label dropout to the null label (the class-conditional teacher). A text
    teacher draws captions instead (:class:`pecker.text.captions.CaptionConditions`); the trainer
    asks either for each batch's model input and condition."""

    def __init__(self, null: int, dropout: float):
        self.null, self.dropout = null, float(dropout)

    def draw(self, x: torch.Tensor, y: torch.Tensor, gen: torch.Generator):
        y = y.clone()
        y[torch.rand(len(y), generator=gen) < self.dropout] = self.null
        return x, ClassCondition(y, self.null)

    def describe(self) -> dict:
        return {"conditioning": "class", "label_dropout": self.dropout}


class BatchDraw:
    """What one teacher step trains on: the sampler's next batch of images (in the model's range,
    mirrored at random with ``hflip``), its conditions, timesteps and noise, drawn from ``gen`` in
    this order; ``next()`` returns ``(x, cond, t, eps)`` on ``device``."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, sampler: EpochSampler, conditions,
                 gen: torch.Generator, T: int, hflip: bool, device):
        self.images, self.labels, self.sampler, self.conditions = images, labels, sampler, conditions
        self.gen, self.T, self.hflip, self.device = gen, T, bool(hflip), device

    def next(self):
        idx = self.sampler.next()
        x = to_model_range(self.images[idx]).to(self.device)
        y = self.labels[idx]
        if self.hflip:
            flip = torch.rand(len(idx), generator=self.gen) < 0.5
            x[flip.to(self.device)] = x[flip.to(self.device)].flip(-1)
        x, cond = self.conditions.draw(x, y, self.gen)
        t = torch.randint(0, self.T, (len(idx),), generator=self.gen)
        eps = torch.randn(x.shape, generator=self.gen)
        return x, cond.to(self.device), t.to(self.device), eps.to(self.device)


def make_conditions(ds_cfg: dict, model, ddpm, device):
    """The condition draw of a dataset's teacher: captions (a ``text`` section) or class labels."""
    if ds_cfg.get("text"):
        from pecker.text.captions import caption_conditions

        return caption_conditions(ds_cfg, model, ddpm, device)
    cond = LabelConditions(null_label(model), ds_cfg["teacher"]["label_dropout"])
    return cond, cond.describe()


def make_ema(model: torch.nn.Module, tcfg: dict) -> EMAModel:
    # diffusers' EMAModel warms up as min(decay, (1+s)/(10+s)); min_decay=decay makes it constant.
    decay = tcfg["ema_decay"]
    return EMAModel(model.parameters(), decay=decay, min_decay=0.0 if tcfg["ema_warmup"] else decay)


def ema_state_dict(model: torch.nn.Module, ema: EMAModel) -> dict[str, torch.Tensor]:
    """The EMA weights as a state dict of ``model``'s architecture."""
    sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    names = [n for n, _ in model.named_parameters()]
    for name, shadow in zip(names, ema.shadow_params):
        sd[name] = shadow.detach().clone()
    return sd


def train_teacher(
    ds_cfg: dict,
    data_dir: str | Path,
    out_dir: str | Path,
    device: torch.device,
    max_steps: int | None = None,
    *,
    tcfg: dict | None = None,
    exclude_class: int | None = None,
    config_hash: str | None = None,
    what: str = "teacher",
    names: tuple[str, str] = ("model", "ema"),
    extra_meta: dict | None = None,
) -> dict:
    """Train (or resume) the teacher; return the final EMA sidecar. ``max_steps`` stops early
    (used to test resumption) without writing final outputs. Raises
    :class:`pecker.runs.ResumeRefused` when ``out_dir`` holds a state of another configuration or
    data file.

    The Retrain baseline (:mod:`pecker.unlearn.baselines.retrain`) is this recipe with its own
    settings ``tcfg``, the images of ``exclude_class`` left out, its own ``config_hash``, the final
    files named ``names`` (raw, EMA) and ``extra_meta`` in their sidecars."""
    tcfg = ds_cfg["teacher"] if tcfg is None else tcfg
    chash = ds_stage_hash(ds_cfg, "teacher") if config_hash is None else config_hash
    run = RunFolder(out_dir, chash, what, keep=tcfg["keep_checkpoints"], hint="lower config key 'teacher.lr'")
    rec = Recorder(f"{what.split()[0]}.train", chash, seeds={what.split()[0]: tcfg["seed"]})
    seed_all(tcfg["seed"])

    images, labels, data_meta = load_prepared(data_dir)
    res, ch = ds_cfg["data"]["resolution"], ds_cfg["data"]["channels"]
    if images.shape[1:] != (res, res, ch):
        raise ValueError(
            f"{data_dir}: images are {images.shape[1:]}, config datasets.*.data asks for {(res, res, ch)}"
        )
    inputs = {"data_sha256": io.sha256_file(Path(data_dir) / "train.npz")}
    if exclude_class is not None:
        keep = labels != exclude_class
        images, labels = images[keep], labels[keep]
        log.info("%s: %d images of class %d left out, %d kept", what, int((~keep).sum()), exclude_class, len(labels))
    images_t, labels_t = torch.from_numpy(images), torch.from_numpy(labels)

    precision = Precision.from_config(tcfg.get("precision"), "teacher.precision", device)
    model = build_unet(ds_cfg["unet"], ds_cfg["data"]).to(device)
    precision.prepare(model)
    opt = torch.optim.Adam(model.parameters(), lr=tcfg["lr"], betas=tuple(tcfg["adam_betas"]))
    ema = make_ema(model, tcfg)
    ddpm = make_scheduler(ds_cfg["diffusion"])
    sched = Schedule(ddpm, device)
    conditions, cond_meta = make_conditions(ds_cfg, model, ddpm, device)
    sampler = EpochSampler(len(images_t), tcfg["batch_size"], tcfg["seed"])
    noise_gen = torch.Generator().manual_seed(tcfg["seed"] + 1)
    batches = BatchDraw(images_t, labels_t, sampler, conditions, noise_gen, sched.T, tcfg["hflip"], device)
    log.info("%s: %s parameters, %d images, device %s", what, f"{n_params(model):,}", len(images_t), device)

    step, prev = 0, None
    resumed = run.resume(tcfg["steps"], expect=inputs)
    if resumed is not None:
        tensors, meta, prev = resumed
        model.load_state_dict(io.unprefixed("model", tensors))
        ema_t = io.unprefixed("ema", tensors)
        ema.shadow_params = [ema_t[n].to(device) for n, _ in model.named_parameters()]
        ema.optimization_step = meta["ema_optimization_step"]
        io.optimizer_from_tensors(opt, tensors, meta["optimizer"], "opt")
        sampler.load(tensors)
        io.rng_from_tensors(tensors, meta["rng"], {"noise": noise_gen})
        step = meta["step"]
    csv_log = run.open_log(LOG_FIELDS, step)

    total = tcfg["steps"] if max_steps is None else min(max_steps, tcfg["steps"])
    model.train()
    bar = tqdm(total=total, initial=step, desc=what, unit="it", mininterval=5, dynamic_ncols=True)
    t_last, last_logged = time.perf_counter(), step
    try:
        while step < total:
            x, cond, t, eps = batches.next()
            lr = tcfg["lr"] * min(1.0, (step + 1) / tcfg["lr_warmup_steps"]) if tcfg["lr_warmup_steps"] else tcfg["lr"]
            for g in opt.param_groups:
                g["lr"] = lr
            with precision.forward(device):  # a no-op at float32; the backward pass runs outside it
                pred = eps_pred(model, sched.noise(x, t, eps), t, cond)
                loss = F.mse_loss(pred, eps)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), tcfg["grad_clip"])
            opt.step()
            ema.step(model.parameters())
            loss = loss.detach()
            step += 1
            bar.update(1)

            if step % tcfg["log_every"] == 0 or step == total:
                now = time.perf_counter()
                csv_log.write({
                    "step": step, "images_seen": step * tcfg["batch_size"], "loss": float(loss),
                    "grad_norm": float(gnorm), "lr": lr, "ema_decay": ema.cur_decay_value,
                    "sec_per_step": (now - t_last) / max(step - last_logged, 1),
                })
                t_last, last_logged = now, step
                bar.set_postfix(loss=f"{float(loss):.4f}")
                log.info("step %d loss %.4f grad_norm %.3f", step, float(loss), float(gnorm))
            if not math.isfinite(float(loss)):
                raise FloatingPointError(f"{what} loss is {float(loss)} at step {step}: the run diverged (lower "
                                         "config key 'teacher.lr'); no state was written for this step")
            if step % tcfg["checkpoint_every"] == 0 or step == total:
                tensors, meta = _state(model, ema, opt, sampler, noise_gen)
                run.save_state(step, tensors, {**meta, **inputs})
    finally:
        bar.close()
        csv_log.close()
    if step < tcfg["steps"]:
        return {"step": step, "finished": False}

    meta = {
        "kind": "teacher", "step": step, "images_seen": step * tcfg["batch_size"],
        "config_hash": chash, "dataset_meta": {k: data_meta.get(k) for k in ("source", "class_names", "resolution")},
        "conditions": cond_meta, "precision": precision.describe(), **inputs, **(extra_meta or {}),
    }
    prov = rec.finish(resumed_from=str(prev) if prev else None)
    meta["wall_clock_s"] = prov["wall_clock_s"]  # this attempt's (the log's sec_per_step covers resumes)
    run.finish_log()
    raw_name, ema_name = names
    save_unet(run.out_dir / raw_name, model, {**meta, "weights": "raw", "provenance": prov})
    ema_model = build_unet(ds_cfg["unet"], ds_cfg["data"])
    ema_model.load_state_dict(ema_state_dict(model, ema))
    save_unet(run.out_dir / ema_name, ema_model, {**meta, "weights": "ema", "ema_decay": tcfg["ema_decay"],
                                                  "provenance": prov})
    return io.read_sidecar(run.out_dir / f"{ema_name}.json")


def _state(model, ema, opt, sampler, noise_gen) -> tuple[dict, dict]:
    names = [n for n, _ in model.named_parameters()]
    tensors = io.prefixed("model", model.state_dict())
    tensors.update({f"ema.{n}": p for n, p in zip(names, ema.shadow_params)})
    opt_t, opt_meta = io.optimizer_to_tensors(opt, "opt")
    rng_t, rng_meta = io.rng_to_tensors({"noise": noise_gen})
    tensors.update(opt_t)
    tensors.update(rng_t)
    tensors.update(sampler.state())
    return tensors, {"kind": "teacher_train_state", "ema_optimization_step": ema.optimization_step,
                     "optimizer": opt_meta, "rng": rng_meta}


def install_sd_teacher(ds_cfg: dict, out_dir: str | Path, baselines: bool = False) -> dict:
    """``teacher.source: sd_folder``: the UNet of the Stable Diffusion folder ``text.model`` (a fetched
    asset, its files verified against the asset manifest first) installed as ``ema`` and ``model``,
    so every later step reads it like any other teacher. The SD folder's file hashes and the hub
    commit it came from are recorded in the sidecar. ``baselines``: the UNet of
    ``teacher.baselines_model`` instead (the multi-step rows' SD v1.4), hashed as that folder's."""
    from pecker.assets import MANIFEST
    from pecker.text.stack import sd_unet

    if baselines:
        folder = ds_cfg["teacher"].get("baselines_model")
        if not folder:
            raise ConfigError("config key 'teacher.baselines_model' is not set: the multi-step rows use the teacher")
        ds_cfg = {**ds_cfg, "text": {**ds_cfg["text"], "model": folder}}
    folder = Path(ds_cfg["text"]["model"])
    manifest_path = folder / MANIFEST
    origin = {"folder": str(folder)}
    if manifest_path.is_file():
        manifest = io.read_json(manifest_path)
        for rel in ("unet/config.json", "unet/diffusion_pytorch_model.safetensors"):
            entry = manifest["files"].get(rel)
            if entry is not None:
                io.verify_checksum(folder / rel, entry["sha256"])
        origin.update(asset=manifest["asset"], hub=manifest["origin"], files={
            k: v["sha256"] for k, v in manifest["files"].items() if k.startswith("unet/")})
    else:
        log.warning("%s has no asset manifest (%s): the teacher's source files are not verified", folder, MANIFEST)
    model = sd_unet(ds_cfg["text"])
    chash = ds_stage_hash(ds_cfg, "teacher")
    meta = {"kind": "teacher", "source": "sd_folder", "origin": origin, "config_hash": chash, "weights": "ema",
            "role": "baselines (teacher.baselines_model; text stack of text.model)" if baselines else "teacher"}
    meta["provenance"] = Recorder("teacher.fetch", chash).finish()
    out_dir = Path(out_dir)
    save_unet(out_dir / "ema", model, meta)
    save_unet(out_dir / "model", model, meta)
    return meta


def fetch_teacher(ds_cfg: dict, out_dir: str | Path, baselines: bool = False) -> dict:
    """``teacher.source: file | published``: verify a checkpoint (full sha256, before it is read) and
    install it as ``ema`` and ``model``.

    ``file``: a safetensors state dict of the configured network, installed as both. ``published``:
    the SA authors' pickled ``[model, optimizer, step, ema]`` list, read with ``weights_only=True``
    (:func:`pecker.diffusion.published.convert_published`): its EMA weights become ``ema`` (what SFD
    starts from, ``init_from_ema``), its raw weights ``model`` (what SA and SalUn fine-tune)."""
    from pecker import weights

    tcfg = ds_cfg["teacher"]
    if tcfg["source"] == "sd_folder":
        return install_sd_teacher(ds_cfg, out_dir, baselines)
    if baselines:
        raise ConfigError("config key 'teacher.baselines_model': only with teacher.source sd_folder")
    fcfg = tcfg.get("file") or {}
    src, sha = Path(fcfg.get("path") or Path(out_dir) / "download" / Path(str(fcfg.get("url"))).name), fcfg["sha256"]
    if not src.is_file():
        if not fcfg.get("url"):
            raise weights.Unavailable(f"config key 'teacher.file.path': {src} does not exist and teacher.file.url is "
                                      "not set; put the checkpoint there (docs/published-teachers.md)")
        weights.download(fcfg["url"], src, "teacher.file.url")
    chash = ds_stage_hash(ds_cfg, "teacher")
    out_dir = Path(out_dir)
    meta = {"kind": "teacher", "source": tcfg["source"], "source_file": str(src), "source_sha256": sha,
            "config_hash": chash}
    if tcfg["source"] == "published":
        from pecker.diffusion.published import read_published, save_published
        from pecker.diffusion.unet import ddpm_conditional_kwargs

        arch = ddpm_conditional_kwargs(ds_cfg["unet"], ds_cfg["data"])
        ckpt = read_published(src, sha)  # hashed and read once for both weight sets
        origin = {"file": src.name, "sha256": sha.lower()}
        for which, name in (("ema", "ema"), ("raw", "model")):
            save_published(ckpt, origin, out_dir / name, arch, which,
                           meta={**meta, "provenance": Recorder("teacher.fetch", chash).finish()})
        return meta
    io.verify_checksum(src, sha)
    from safetensors.torch import load_file

    model = build_unet(ds_cfg["unet"], ds_cfg["data"])
    model.load_state_dict(load_file(str(src)), strict=True)
    meta = {**meta, "weights": "ema", "provenance": Recorder("teacher.fetch", chash).finish()}
    save_unet(out_dir / "ema", model, meta)
    save_unet(out_dir / "model", model, meta)
    return meta
