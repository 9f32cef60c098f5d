"""``pecker classifier train|predict``."""

from __future__ import annotations

import click

from pecker import clitools
from pecker import config as cfgmod


@click.group()
def classifier() -> None:
    """Train the UA classifier, or classify an image file with it."""


@classifier.command()
@clitools.config_options
@clitools.data_option
@click.option("--out", "out_prefix", type=click.Path(dir_okay=False), required=True,
              help="Checkpoint prefix, e.g. results/mnist/classifier/model (writes .safetensors + .json).")
@clitools.threads_option
@clitools.log_option
def train(config_files, overrides, dataset, data_dir, out_prefix, threads, log_file) -> None:
    """Train the classifier and record its held-out accuracy in the sidecar."""
    from pecker.classifier.train import train_classifier

    log = clitools.setup_logging(log_file)
    clitools.set_threads(threads)
    cfg = clitools.load_config(config_files, overrides)
    ds = cfgmod.dataset_config(cfg, dataset)
    data_dir = clitools.data_dir_for(cfg, dataset, data_dir)
    meta = train_classifier(ds, data_dir, out_prefix, clitools.resolve_device(cfg["device"]))
    log.info("held-out accuracy %.4f (%s%s)", meta["heldout_accuracy"], meta["arch"]["name"],
             ", substitute for the paper's ImageNet ResNet-34" if meta["substitute"] else "")
