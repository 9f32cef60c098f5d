"""``pecker data prepare|info``: build a prepared dataset folder, or summarise one."""

from __future__ import annotations

from pathlib import Path

import click

from pecker import clitools
from pecker import config as cfgmod
from pecker import io
from pecker.io import ChecksumError


@click.group()
def data() -> None:
    """Prepare and inspect datasets."""


@data.command("prepare")
@clitools.config_options
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None,
              help="Output folder (default: {data_dir}/{dataset}).")
@clitools.log_option
def prepare_cmd(config_files, overrides, dataset, out_dir, log_file) -> None:
    """Load a raw source, resize it and write train.npz + meta.json."""
    from pecker.data.prepare import prepare
    from pecker.data.raw import MissingRawDataError

    log = clitools.setup_logging(log_file)
    cfg = clitools.load_config(config_files, overrides)
    try:
        data_cfg = cfgmod.dataset_config(cfg, dataset)["data"]
        out = Path(out_dir) if out_dir else Path(cfg["data_dir"]) / dataset
        meta = prepare(data_cfg, out, dataset=dataset)
    except (cfgmod.ConfigError, MissingRawDataError, ChecksumError) as err:
        raise click.ClickException(str(err)) from None
    log.info("prepared %s: %d images at %dx%dx%d in %s", dataset, meta["n_images"],
             meta["resolution"], meta["resolution"], meta["channels"], out)


@data.command("info")
@click.argument("data_dir", type=click.Path(exists=True, file_okay=False))
def info_cmd(data_dir) -> None:
    """Print source, size and images per class of a prepared dataset folder."""
    meta_path = Path(data_dir) / "meta.json"
    if not meta_path.is_file():
        raise click.ClickException(f"{meta_path} not found: not a prepared dataset folder")
    meta = io.read_json(meta_path)
    click.echo(f"dataset:    {meta.get('dataset')}")
    click.echo(f"source:     {meta['source']} ({meta['root']})")
    click.echo(f"images:     {meta['n_images']} x {meta['resolution']}x{meta['resolution']}"
               f"x{meta['channels']} (resize: {meta['resize']['method']})")
    click.echo(f"config:     {meta['config_hash']}")
    width = max(len(n) for n in meta["class_names"])
    for i, name in enumerate(meta["class_names"]):
        click.echo(f"  {i:>2}  {name:<{width}}  {meta['class_counts'][name]}")
