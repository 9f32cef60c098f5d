"""``pecker teacher train|fetch|sample|convert-pickled``."""

from __future__ import annotations

import click
import torch

from pecker import clitools
from pecker import config as cfgmod
from pecker.workflow import ds_stage_hash


@click.group()
def teacher() -> None:
    """Train, fetch or sample the DDPM teacher; convert a pickled published network."""


@teacher.command()
@clitools.config_options
@clitools.data_option
@click.option("--out", "out_dir", type=click.Path(file_okay=False), required=True,
              help="Run folder, e.g. results/mnist/teacher.")
@click.option("--max-steps", type=int, default=None, help="Stop after this many steps (testing resumption).")
@clitools.threads_option
@clitools.log_option
def train(config_files, overrides, dataset, data_dir, out_dir, max_steps, threads, log_file) -> None:
    """Train the teacher, resuming from the newest checkpoint in OUT/ckpt when present."""
    from pecker.diffusion.train import train_teacher

    clitools.setup_logging(log_file)
    clitools.set_threads(threads)
    cfg = clitools.load_config(config_files, overrides)
    ds = cfgmod.dataset_config(cfg, dataset)
    if ds["teacher"]["source"] != "train":
        raise cfgmod.ConfigError(f"config key 'datasets.{dataset}.teacher.source': {ds['teacher']['source']}: "
                                 "the teacher is fetched, not trained (pecker teacher fetch)")
    data_dir = clitools.data_dir_for(cfg, dataset, data_dir)
    train_teacher(ds, data_dir, out_dir, clitools.resolve_device(cfg["device"]), max_steps=max_steps)


@teacher.command()
@clitools.config_options
@click.option("--out", "out_dir", type=click.Path(file_okay=False), required=True,
              help="Teacher folder, e.g. results/cifar10/teacher.")
@click.option("--baselines", is_flag=True, default=False,
              help="Install the UNet of teacher.baselines_model instead (the multi-step rows of Tables 2-3: SD v1.4).")
@clitools.log_option
def fetch(config_files, overrides, dataset, out_dir, baselines, log_file) -> None:
    """Install a published teacher (teacher.source file, published or sd_folder) as OUT/ema and
    OUT/model, after verifying its full sha256; offline, say what file to provide."""
    from pecker.diffusion.train import fetch_teacher

    clitools.setup_logging(log_file)
    cfg = clitools.load_config(config_files, overrides)
    ds = cfgmod.dataset_config(cfg, dataset)
    if ds["teacher"]["source"] == "train":
        raise cfgmod.ConfigError(f"config key 'datasets.{dataset}.teacher.source': train: nothing to fetch "
                                 "(pecker teacher train)")
    fetch_teacher(ds, out_dir, baselines)


@teacher.command("convert-pickled")
@click.argument("pickle_file", type=click.Path(dir_okay=False))
@click.option("--sha256", "sha256", default=None, help="The file's full sha256 (checked before anything is read).")
@click.option("--manifest", "manifest", type=click.Path(dir_okay=False, exists=True), default=None,
              help="Instead of --sha256: the manifest of the asset the file belongs to (pecker assets fetch).")
@click.option("--key", default="ema", show_default=True, help="Key of the network in the pickled dict ('' = the pickle is the network).")
@click.option("--out", "out_prefix", type=click.Path(dir_okay=False), required=True,
              help="Output prefix: PREFIX.safetensors and PREFIX.json.")
@clitools.log_option
def convert_pickled(pickle_file, sha256, manifest, key, out_prefix, log_file) -> None:
    """Convert a pickled diffusers UNet2DConditionModel (SiD-LSG's dict(ema=unet)) to safetensors, with
    no code from the file run (pecker/diffusion/pickled.py); its own step, run once per file."""
    import pickle

    from pecker.diffusion.pickled import convert_pickled_unet

    clitools.setup_logging(log_file)
    sha256 = clitools.expected_sha256(sha256, manifest, pickle_file)
    try:
        out = convert_pickled_unet(pickle_file, sha256, out_prefix, key or None)
    except (pickle.UnpicklingError, ValueError) as err:
        raise click.ClickException(f"{pickle_file}: {err}") from None
    click.echo(str(out))


@teacher.command()
@clitools.config_options
@click.option("--teacher", "teacher_prefix", type=click.Path(dir_okay=False), required=True,
              help="Teacher checkpoint prefix, e.g. results/mnist/teacher/ema.")
@click.option("--out", "out_path", type=click.Path(dir_okay=False), required=True, help="Samples .npz.")
@click.option("--grid", "grid_path", type=click.Path(dir_okay=False), default=None, help="PNG grid, one row per class.")
@click.option("--per-class", type=int, default=None, help="Override teacher.sample.per_class.")
@clitools.threads_option
@clitools.log_option
def sample(config_files, overrides, dataset, teacher_prefix, out_path, grid_path, per_class, threads, log_file) -> None:
    """Draw seeded class-conditional samples (teacher.sample settings) from a teacher checkpoint."""
    from pecker.diffusion.sample import class_labels, sample_batch, sample_many, save_grid, save_samples
    from pecker.diffusion.schedule import make_scheduler
    from pecker.diffusion.unet import load_unet
    from pecker.provenance import Recorder

    log = clitools.setup_logging(log_file)
    clitools.set_threads(threads)
    if per_class:
        overrides = (*overrides, f"datasets.{dataset}.teacher.sample.per_class={per_class}")
    cfg = clitools.load_config(config_files, overrides)
    ds = cfgmod.dataset_config(cfg, dataset)
    scfg = ds["teacher"]["sample"]
    device = clitools.resolve_device(cfg["device"])
    model, meta = load_unet(teacher_prefix, device=device)
    model.eval()
    ddpm = make_scheduler(ds["diffusion"])
    rec = Recorder("teacher.sample", ds_stage_hash(ds, "sample"), seeds={"sample": scfg["seed"]})
    labels = class_labels(ds["data"]["num_classes"], scfg["per_class"])
    log.info("sampling %d images (%s, %d steps, guidance %.2f)", len(labels), scfg["sampler"], scfg["steps"],
             scfg["guidance_scale"])

    def draw(lab, gen):
        return sample_batch(model, ddpm, lab, gen, scfg["sampler"], scfg["steps"], scfg["guidance_scale"])

    images = sample_many(draw, labels, scfg["batch_size"], scfg["seed"], desc="teacher samples")
    save_samples(out_path, images, labels, {
        "kind": "teacher_samples", "model": str(teacher_prefix), "model_sha256": meta["sha256"],
        "model_config_hash": meta.get("config_hash"), "sampling": scfg,
        "provenance": rec.finish(),
    })
    if grid_path:
        nrow = min(scfg["per_class"], 10)
        keep = torch.cat([torch.nonzero(labels == c).flatten()[:nrow] for c in range(ds["data"]["num_classes"])])
        save_grid(grid_path, images[keep.numpy()], nrow=nrow)
    log.info("wrote %s", out_path)
