"""Shared click options and helpers for the ``pecker`` subcommands."""

from __future__ import annotations

import logging
import os
import sys
from contextlib import contextmanager
from pathlib import Path

import click
import torch

from pecker import config as cfgmod


def config_options(f):
    """``--config FILE`` (repeatable, merged left to right), ``--set key=value`` and ``--dataset``."""
    f = click.option(
        "--dataset", "-d", required=True, help="Dataset key under 'datasets' in the config."
    )(f)
    f = click.option(
        "--set", "overrides", multiple=True, metavar="KEY=VALUE",
        help="Override a config value, e.g. datasets.mnist.teacher.steps=100 (repeatable).",
    )(f)
    f = click.option(
        "--config", "-c", "config_files", multiple=True, type=click.Path(exists=True, dir_okay=False),
        default=("config/config.yaml",), show_default=True,
        help="Config file(s); several are merged left to right.",
    )(f)
    return f


def load_config(config_files, overrides) -> dict:
    try:
        return cfgmod.resolve(config_files, overrides)
    except cfgmod.ConfigError as err:
        raise click.ClickException(str(err)) from None


@contextmanager
def clean_errors():
    """Turn the errors a user can fix (bad config, a refused resume, a failed checksum, a diverged
    run, a file that cannot be downloaded offline) into a one-line message and exit code 1 instead
    of a traceback."""
    from pecker.io import IntegrityError
    from pecker.runs import ResumeRefused
    from pecker.weights import Unavailable

    try:
        yield
    except (cfgmod.ConfigError, ResumeRefused, IntegrityError, FloatingPointError, Unavailable) as err:
        raise click.ClickException(str(err)) from None


def setup_logging(log_file: str | None = None, level: int = logging.INFO) -> logging.Logger:
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_file))
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", handlers=handlers, force=True
    )
    return logging.getLogger("pecker")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise click.ClickException("config key 'device': cuda requested but no GPU is visible")
    return torch.device(name)


def set_threads(threads: int | None) -> None:
    """Honour Snakemake's ``threads`` (passed as --threads) for torch's intra-op pool."""
    n = threads or int(os.environ.get("OMP_NUM_THREADS", "0") or 0)
    if n > 0:
        torch.set_num_threads(n)


threads_option = click.option(
    "--threads", type=int, default=None, help="Torch CPU threads (default: torch's choice)."
)
data_option = click.option(
    "--data", "data_dir", type=click.Path(file_okay=False), default=None,
    help="Prepared dataset folder (default: {data_dir}/{dataset}).",
)


def data_dir_for(cfg: dict, dataset: str, data_dir: str | None) -> str:
    """The prepared dataset folder: ``--data`` when given, else ``{data_dir}/{dataset}``."""
    return data_dir or str(Path(cfg["data_dir"]) / dataset)


log_option = click.option("--log", "log_file", type=click.Path(dir_okay=False), default=None,
                          help="Also write the log to this file.")


def expected_sha256(sha256: str | None, manifest: str | None, path: str) -> str:
    """The checksum a converter verifies ``path`` against: ``--sha256`` or what the asset manifest
    ``--manifest`` (pecker assets fetch) records for it; exactly one must be given."""
    from pecker import io

    if (sha256 is None) == (manifest is None):
        raise click.UsageError("give exactly one of --sha256 and --manifest")
    if sha256 is not None:
        return sha256
    rel = Path(path).resolve().relative_to(Path(manifest).resolve().parent).as_posix()
    entry = io.read_json(manifest)["files"].get(rel)
    if entry is None:
        raise click.ClickException(f"{manifest} does not list {rel}: not a file of that asset")
    return entry["sha256"]
