"""``pecker config show|hash``: inspect the resolved configuration."""

from __future__ import annotations

import click
import yaml

from pecker import clitools
from pecker import config as cfgmod


@click.group()
def config() -> None:
    """Inspect the resolved, validated configuration."""


@config.command("show")
@clitools.config_options
def show(config_files, overrides, dataset) -> None:
    """Print the resolved config of one dataset (defaults filled in)."""
    cfg = clitools.load_config(config_files, overrides)
    click.echo(yaml.safe_dump(cfgmod.dataset_config(cfg, dataset), sort_keys=True))


@config.command("hash")
@clitools.config_options
@click.option("--stage", type=click.Choice(sorted(cfgmod.STAGE_SECTIONS)), required=True)
def hash_(config_files, overrides, dataset, stage) -> None:
    """Print the hash of the config sections one stage depends on."""
    cfg = clitools.load_config(config_files, overrides)
    click.echo(cfgmod.stage_hash(cfg, dataset, stage))
