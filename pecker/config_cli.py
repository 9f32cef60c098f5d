"""``pecker config show|hash``: inspect the resolved configuration."""

from __future__ import annotations

import click
import yaml

from pecker import clitools
from pecker import config as cfgmod
from pecker import workflow


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
@click.option("--stage", type=click.Choice(workflow.STAGES), required=True)
@click.option("--method", default=None, help="Unlearning method (stage unlearn).")
@click.option("--seed", type=int, default=None, help="Unlearning seed (stage unlearn).")
def hash_(config_files, overrides, dataset, stage, method, seed) -> None:
    """Print the config hash of one stage: the number its rule param, resume guard and result files
    record (``config_hash``)."""
    cfg = clitools.load_config(config_files, overrides)
    click.echo(workflow.stage_hash(cfg, dataset, stage, method=method, seed=seed))
