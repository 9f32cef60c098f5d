"""``pecker unlearn``: one SFD / PECKER unlearning run (a method of the config, one seed)."""

from __future__ import annotations

import click

from pecker import clitools
from pecker import config as cfgmod


@click.command()
@clitools.config_options
@click.option("--method", required=True, help="A key of datasets.DATASET.unlearn.methods (sfd, pecker, or a variant).")
@click.option("--seed", type=int, required=True, help="Run seed (the Snakemake rule takes it from unlearn.seeds).")
@click.option("--teacher", "teacher_prefix", type=click.Path(dir_okay=False), required=True,
              help="Teacher EMA checkpoint prefix, e.g. results/mnist/teacher/ema.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), required=True,
              help="Run folder, e.g. results/mnist/unlearn/pecker/seed0.")
@click.option("--data", "data_dir", type=click.Path(file_okay=False), default=None,
              help="Prepared dataset (only for mask.source=real; default: {data_dir}/{dataset}).")
@click.option("--max-steps", type=int, default=None, help="Stop after this many steps in total (testing resumption).")
@clitools.threads_option
@clitools.log_option
def unlearn(config_files, overrides, dataset, method, seed, teacher_prefix, out_dir, data_dir, max_steps,
            threads, log_file) -> None:
    """Unlearn the forget class from the teacher with METHOD; resumes from OUT/ckpt when present.

    Writes OUT/generator_ema.safetensors + .json (the one-step EMA generator), OUT/log.csv (one row
    per step) and OUT/ckpt/stepNNNNNNN/ (generator_ema at every checkpoint, resumable states).
    """
    from pecker.unlearn.trainer import run_unlearning
    from pecker.workflow import unlearn_settings

    log = clitools.setup_logging(log_file)
    clitools.set_threads(threads)
    cfg = clitools.load_config(config_files, overrides)
    with clitools.clean_errors():
        unlearn_settings(cfg, dataset, method)
        ds = cfgmod.dataset_config(cfg, dataset)
        if seed not in ds["unlearn"]["seeds"]:
            log.warning("seed %d is not in datasets.%s.unlearn.seeds %s", seed, dataset, ds["unlearn"]["seeds"])
        data_dir = clitools.data_dir_for(cfg, dataset, data_dir)
        meta = run_unlearning(cfg, dataset, method, seed, teacher_prefix, out_dir,
                              clitools.resolve_device(cfg["device"]), data_dir=data_dir, max_steps=max_steps)
    if meta.get("finished") is False:
        log.info("stopped at step %d (--max-steps); rerun to continue", meta["step"])
    else:
        log.info("wrote %s/generator_ema (step %d, %.0f s)", out_dir, meta["step"], meta["wall_clock_s"])
