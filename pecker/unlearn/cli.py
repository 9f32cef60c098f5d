"""``pecker unlearn``: one unlearning run (a method of the config, one seed): SFD, PECKER and their
variants (the SFD loop), or a Table 1 baseline (Retrain, SA, SalUn), by the method's ``kind``."""

from __future__ import annotations

import click

from pecker import clitools
from pecker import config as cfgmod


@click.command()
@clitools.config_options
@click.option("--method", required=True,
              help="A key of datasets.DATASET.unlearn.methods (sfd, pecker, a variant, or a baseline: retrain, sa, salun).")
@click.option("--seed", type=int, required=True, help="Run seed (the Snakemake rule takes it from unlearn.seeds).")
@click.option("--teacher", "teacher_prefix", type=click.Path(dir_okay=False), default=None,
              help="Teacher EMA checkpoint prefix, e.g. results/mnist/teacher/ema (kinds sfd and sa).")
@click.option("--teacher-raw", "teacher_raw_prefix", type=click.Path(dir_okay=False), default=None,
              help="Raw (non-EMA) teacher prefix, e.g. results/mnist/teacher/model (kinds sa and salun start from it).")
@click.option("--init", "init_dir", type=click.Path(file_okay=False), default=None,
              help="Finished run folder of the method named by init_from (stage 2 of SFD-Two-Stage).")
@click.option("--generator-init", "generator_init", type=click.Path(dir_okay=False), default=None,
              help="Prefix of the converted network the generator starts from (unlearn.generator_init; rule "
                   "convert_generator_init writes it).")
@click.option("--fisher", "fisher_prefix", type=click.Path(dir_okay=False), default=None,
              help="Prefix of SA's released Fisher converted to the teacher's names (fisher.released; rule "
                   "convert_sa_fisher writes it): used instead of computing one.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), required=True,
              help="Run folder, e.g. results/mnist/unlearn/pecker/seed0.")
@click.option("--data", "data_dir", type=click.Path(file_okay=False), default=None,
              help="Prepared dataset (retrain, salun, mask.source=real; default: {data_dir}/{dataset}).")
@click.option("--max-steps", type=int, default=None, help="Stop after this many steps in total (testing resumption).")
@click.option("--init-only", is_flag=True, default=False,
              help="Kind sfd: write the starting generator as OUT/generator_ema and stop (the SiD-LSG row: the "
                   "generator_init network as is, for the method's task).")
@clitools.threads_option
@clitools.log_option
def unlearn(config_files, overrides, dataset, method, seed, teacher_prefix, teacher_raw_prefix, init_dir, generator_init,
            fisher_prefix, out_dir, data_dir, max_steps, init_only, threads, log_file) -> None:
    """Unlearn the forget class with METHOD; resumes from OUT/ckpt when present.

    Kind sfd writes OUT/generator_ema.safetensors + .json (the one-step EMA generator), OUT/log.csv
    (one row per step) and OUT/ckpt/stepNNNNNNN/ (generator_ema at every checkpoint, resumable states).
    Kinds retrain, sa and salun write OUT/unet.safetensors + .json (the multi-step DDPM the evaluation
    samples), OUT/log.csv and OUT/ckpt/ (resumable states, precomputed inputs).
    """
    from pecker.unlearn.settings import method_seeds
    from pecker.workflow import unlearn_settings

    log = clitools.setup_logging(log_file)
    clitools.set_threads(threads)
    cfg = clitools.load_config(config_files, overrides)
    s = unlearn_settings(cfg, dataset, method)
    ds = cfgmod.dataset_config(cfg, dataset)
    seeds = method_seeds(ds["unlearn"], method)
    if seed not in seeds:
        log.warning("seed %d is not among the seeds of datasets.%s.unlearn.methods.%s: %s", seed, dataset, method, seeds)
    data_dir = clitools.data_dir_for(cfg, dataset, data_dir)
    device = clitools.resolve_device(cfg["device"])
    if s.get("kind", "sfd") == "sfd":
        from pecker.unlearn.trainer import run_unlearning

        if teacher_prefix is None:
            raise cfgmod.ConfigError(f"method {method!r} (kind sfd) needs --teacher")
        meta = run_unlearning(cfg, dataset, method, seed, teacher_prefix, out_dir, device, data_dir=data_dir,
                              max_steps=max_steps, init_dir=init_dir, generator_init=generator_init,
                              init_only=init_only)
        name = "generator_ema"
    else:
        from pecker.unlearn.baselines import FINAL, run_baseline

        meta = run_baseline(cfg, dataset, method, seed, out_dir, device, teacher_prefix=teacher_prefix,
                            teacher_raw_prefix=teacher_raw_prefix, data_dir=data_dir, max_steps=max_steps,
                            fisher_prefix=fisher_prefix)
        name = FINAL
    if meta.get("finished") is False:
        log.info("stopped at step %d (--max-steps); rerun to continue", meta["step"])
    else:
        wall = meta.get("wall_clock_s", (meta.get("provenance") or {}).get("wall_clock_s", 0.0))
        log.info("wrote %s/%s (step %d, %.0f s)", out_dir, name, meta["step"], wall)
