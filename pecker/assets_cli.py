"""``pecker assets fetch|status``: the paper-scale files under ``{data_dir}/assets/`` (pecker/assets.py)."""

from __future__ import annotations

import click

from pecker import clitools


def _config_options(f):
    f = click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
                     help="Override a config value (repeatable).")(f)
    return click.option("--config", "-c", "config_files", multiple=True, type=click.Path(exists=True, dir_okay=False),
                        default=("config/config.yaml",), show_default=True,
                        help="Config file(s); several are merged left to right.")(f)


@click.group()
def assets() -> None:
    """Fetch and verify the network assets of the paper-scale configs."""


@assets.command()
@_config_options
@click.option("--asset", "names", multiple=True, help="Asset key under 'assets' (repeatable; default: all).")
@clitools.log_option
def fetch(config_files, overrides, names, log_file) -> None:
    """Download what is missing, verify every file's sha256, write ASSET/manifest.json."""
    from pecker.assets import fetch_asset

    clitools.setup_logging(log_file)
    cfg = clitools.load_config(config_files, overrides)
    for name in names or sorted(cfg.get("assets") or {}):
        m = fetch_asset(cfg, name)
        click.echo(f"{name}: {len(m['files'])} files verified, {len(m['unpinned'])} unpinned")


@assets.command()
@_config_options
def status(config_files, overrides) -> None:
    """Which configured assets are complete on this machine (no download, no hashing)."""
    from pecker.assets import MANIFEST, asset_dir, asset_spec

    cfg = clitools.load_config(config_files, overrides)
    for name in sorted(cfg.get("assets") or {}):
        spec, dest = asset_spec(cfg, name), asset_dir(cfg, name)
        missing = [rel for rel in spec["files"] if not (dest / rel).is_file()]
        state = "fetched" if not missing and (dest / MANIFEST).is_file() else (
            f"{len(missing)} of {len(spec['files'])} files missing" if missing else "present, not yet verified")
        click.echo(f"{name}: {state} ({dest})")


@assets.command("convert-fisher")
@click.argument("pickle_file", type=click.Path(dir_okay=False))
@click.option("--sha256", "sha256", default=None, help="The file's full sha256 (checked before anything is read).")
@click.option("--manifest", "manifest", type=click.Path(dir_okay=False, exists=True), default=None,
              help="Instead of --sha256: the manifest of the asset the file belongs to (pecker assets fetch).")
@click.option("--teacher", "teacher_prefix", type=click.Path(dir_okay=False), required=True,
              help="Prefix of the diffusers UNet the Fisher is for (its names and shapes), e.g. results/sd-celebrity/teacher/ema.")
@click.option("--out", "out_prefix", type=click.Path(dir_okay=False), required=True,
              help="Output prefix: PREFIX.safetensors and PREFIX.json.")
@clitools.log_option
def convert_fisher(pickle_file, sha256, manifest, teacher_prefix, out_prefix, log_file) -> None:
    """Convert SA's released Stable Diffusion Fisher (full_fisher_dict.pkl) to safetensors in the
    teacher's diffusers names, with no code from the file run (pecker/unlearn/baselines/sa_fisher.py);
    its own step, run once per file."""
    import pickle

    from pecker.unlearn.baselines.sa_fisher import convert_released_fisher

    log = clitools.setup_logging(log_file)
    sha256 = clitools.expected_sha256(sha256, manifest, pickle_file)
    try:
        out = convert_released_fisher(pickle_file, sha256, teacher_prefix, out_prefix)
    except (pickle.UnpicklingError, ValueError) as err:
        raise click.ClickException(f"{pickle_file}: {err}") from None
    log.info("SA Fisher %s -> %s", pickle_file, out)
    click.echo(str(out))
