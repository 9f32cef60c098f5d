"""``pecker report tables|figures`` and ``pecker audit``.

    pecker report tables  --out-dir results/tables [--config CFG ...] results/*/eval/*/seed*/*.json
    pecker report figures -d mnist --config results/mnist/configs/<hash>.yaml --out-dir results/figures \\
                          results/mnist/eval/*/seed*/*.json results/mnist/eval/*/seed*/*_grid.npz
    pecker report concept-tables --config CFG [--config CFG ...] --out-dir results/tables \\
                          results/fashion/eval/*/seed*/*.json
    pecker report concept-figures -d fashion --config results/fashion/configs/<hash>.yaml \\
                          --out-dir results/figures results/fashion/eval/*/seed*/*.json \\
                          results/fashion/eval/*/seed*/*_grid.npz
    pecker audit --table results/tables/table1.csv --table results/tables/ablation.csv \\
                 [--table results/tables/table2.csv --table results/tables/table3.csv] \\
                 --out-md results/tables/audit.md --out-json results/tables/audit.json JSON...

Without FILES, ``--results-dir DIR`` finds the metric JSONs (and grids) under DIR. ``pecker audit``
exits with status 1 when a cell lacks provenance (``--allow-missing`` reports it and exits 0).
"""

from __future__ import annotations

from pathlib import Path

import click

from pecker import clitools

FILES = click.argument("files", nargs=-1, type=click.Path(exists=True, dir_okay=False))
RESULTS_DIR = click.option("--results-dir", type=click.Path(file_okay=False), default=None,
                           help="Find the metric JSONs under this folder when no FILES are given.")
PAPER = click.option("--paper", "paper_path", type=click.Path(exists=True, dir_okay=False), default=None,
                     help="The paper's numbers (default: pecker/report/paper_results.yaml).")


def _json_files(files, results_dir, datasets=None) -> list[Path]:
    from pecker.report import results

    jsons = [Path(f) for f in files if str(f).endswith(".json")]
    if not jsons and results_dir:
        jsons = results.discover(results_dir, datasets)
    if not jsons:
        raise click.ClickException("no metric JSONs: pass them as FILES or give --results-dir")
    return jsons


@click.group()
def report() -> None:
    """Tables and figures from the evaluation stage's metric JSONs."""


@report.command()
@FILES
@RESULTS_DIR
@click.option("--config", "-c", "config_files", multiple=True, type=click.Path(exists=True, dir_okay=False),
              help="Config file(s) (e.g. the resolved results/{dataset}/configs/<hash>.yaml of each dataset): the "
                   "ablation table then lists each variant's settings.")
@PAPER
@click.option("--out-dir", type=click.Path(file_okay=False), default="results/tables", show_default=True)
@clitools.log_option
def tables(files, results_dir, config_files, paper_path, out_dir, log_file) -> None:
    """Table 1 (table1.*), the ablation table (ablation.*) and the efficiency table with its verdict
    (efficiency.csv/.md/.tex/.json) in OUT_DIR. The efficiency settings are the config's ``report``
    section (thresholds, retained-accuracy tolerance, reference method, interval level)."""
    from pecker.report import results, tables as tab
    from pecker.report.paper import Paper

    log = clitools.setup_logging(log_file)
    paths = _json_files(files, results_dir)
    try:
        df = results.load_frame(paths)
    except results.ResultsError as err:
        raise click.ClickException(str(err)) from None
    cfg = clitools.load_config(config_files, ()) if config_files else None
    written = tab.write_tables(df, out_dir, cfg, paper_datasets=Paper(path=paper_path).dataset_names)
    log.info("%d metric JSONs -> %s", len(paths), ", ".join(str(p) for p in written.values()))


@report.command()
@clitools.config_options
@FILES
@RESULTS_DIR
@click.option("--out-dir", type=click.Path(file_okay=False), default="results/figures", show_default=True)
@clitools.log_option
def figures(config_files, overrides, dataset, files, results_dir, out_dir, log_file) -> None:
    """fig2_DATASET, fig3_DATASET and ablation_DATASET (.png and .pdf) in OUT_DIR.

    FILES are the dataset's metric JSONs and its ``step*_grid.npz`` sample grids."""
    from pecker.report import figures as fig, results

    log = clitools.setup_logging(log_file)
    cfg = clitools.load_config(config_files, overrides)
    unl = (cfg["datasets"].get(dataset) or {}).get("unlearn") or {}
    jsons = _json_files(files, results_dir, [dataset])
    grid_files = [f for f in files if str(f).endswith(".npz")]
    if not files and results_dir:
        grid_files = results.discover_grids(results_dir, dataset)
    try:
        df = results.load_frame(jsons)
        grids = results.grid_index(grid_files)
    except results.ResultsError as err:
        raise click.ClickException(str(err)) from None
    other = sorted(set(df["dataset"]) - {dataset})
    if other:
        log.warning("ignoring metric JSONs of other datasets: %s", ", ".join(other))
    written = fig.write_figures(df[df["dataset"] == dataset], grids, dataset, out_dir,
                                forget_class=unl.get("forget_class", 0), cover_class=unl.get("cover_class", 1))
    log.info("%s: %s", dataset, ", ".join(str(p) for ps in written.values() for p in ps))


@report.command("concept-tables")
@FILES
@RESULTS_DIR
@click.option("--config", "-c", "config_files", multiple=True, type=click.Path(exists=True, dir_okay=False),
              help="Resolved config of each text dataset (repeatable; its unlearn.tasks and unlearn.methods name "
                   "the rows). A dataset without one is named from its JSONs.")
@click.option("--out-dir", type=click.Path(file_okay=False), default="results/tables", show_default=True)
@clitools.log_option
def concept_tables(files, results_dir, config_files, out_dir, log_file) -> None:
    """Tables 2 and 3 (table2.*, table3.*: csv, md, tex) in OUT_DIR from the final concept evaluations of
    the text datasets (FILES: their metric JSONs; other JSONs are ignored)."""
    from pecker.report import concept, results

    log = clitools.setup_logging(log_file)
    try:
        records = results.load_records(_json_files(files, results_dir))
    except results.ResultsError as err:
        raise click.ClickException(str(err)) from None
    loaded = [clitools.load_config((f,), ()) for f in config_files]
    cfgs = {name: ds for c in loaded for name, ds in (c.get("datasets") or {}).items()
            if (ds or {}).get("text") is not None}
    level = ((loaded[0].get("report") or {}) if loaded else {}).get("interval_level", 0.95)
    written = concept.write_concept_tables(records, cfgs, out_dir, level=level)
    n = len(concept.concept_records(records))
    log.info("%d metric JSONs (%d final concept evaluations) -> %s", len(records), n,
             ", ".join(str(p) for p in written.values()))


@report.command("concept-figures")
@clitools.config_options
@FILES
@RESULTS_DIR
@click.option("--out-dir", type=click.Path(file_okay=False), default="results/figures", show_default=True)
@clitools.log_option
def concept_figures(config_files, overrides, dataset, files, results_dir, out_dir, log_file) -> None:
    """fig4_DATASET, fig5_DATASET and fig6_DATASET (.png and .pdf) in OUT_DIR.

    FILES are the text dataset's metric JSONs (they give each checkpoint's images seen) and its sample
    grids (``step*_grid.npz`` of every SFD / PECKER checkpoint, ``final_grid.npz`` of the teacher and SLD)."""
    from pecker import config as cfgmod
    from pecker.report import concept, results

    log = clitools.setup_logging(log_file)
    cfg = clitools.load_config(config_files, overrides)
    try:
        ds_cfg = cfgmod.dataset_config(cfg, dataset)
    except cfgmod.ConfigError as err:
        raise click.ClickException(str(err)) from None
    if ds_cfg.get("text") is None:
        raise click.ClickException(f"dataset {dataset!r} has no 'text' section: Figs 4-6 are for text datasets "
                                   "(pecker report figures draws the class datasets')")
    jsons = [f for f in files if str(f).endswith(".json")]
    grid_paths = [f for f in files if str(f).endswith(".npz")]
    if not files and results_dir:
        jsons = results.discover(results_dir, [dataset])
        grid_paths = sorted(str(p) for p in (Path(results_dir) / dataset / "eval").glob("*/seed*/*_grid.npz"))
    try:
        records = results.load_records(jsons)
    except results.ResultsError as err:
        raise click.ClickException(str(err)) from None
    other = sorted({str(r["dataset"]) for r in records} - {dataset})
    if other:
        log.warning("ignoring metric JSONs of other datasets: %s", ", ".join(other))
    records = [r for r in records if str(r["dataset"]) == dataset]
    written = concept.write_concept_figures(ds_cfg, dataset, grid_paths, out_dir, records=records)
    log.info("%s: %d grids, %d metric JSONs -> %s", dataset, len(grid_paths), len(records),
             ", ".join(str(p) for ps in written.values() for p in ps))


@click.command()
@FILES
@RESULTS_DIR
@click.option("--table", "table_files", multiple=True, type=click.Path(exists=True, dir_okay=False),
              default=("results/tables/table1.csv",), show_default=True,
              help="A table CSV written by `pecker report tables` or `concept-tables` (repeatable); its stem "
                   "names it (table2 / table3: the concept tables).")
@PAPER
@click.option("--out-md", type=click.Path(dir_okay=False), default="results/tables/audit.md", show_default=True)
@click.option("--out-json", type=click.Path(dir_okay=False), default="results/tables/audit.json", show_default=True)
@click.option("--efficiency", "efficiency_path", type=click.Path(exists=True, dir_okay=False), default=None,
              help="efficiency.json of `pecker report tables`: its verdicts are listed next to the paper's claims.")
@click.option("--allow-missing", is_flag=True, help="Exit 0 even when cells lack provenance.")
@click.option("--quiet", "-q", is_flag=True, help="Do not print the report (only the summary).")
def audit(files, results_dir, table_files, paper_path, out_md, out_json, efficiency_path, allow_missing,
          quiet) -> None:
    """Every cell of the tables: ours, the paper's, the difference and our provenance.

    FILES are the metric JSONs behind the tables. Exits 1 when any cell lacks provenance."""
    import pandas as pd

    from pecker.report import audit as aud, results
    from pecker.report.paper import Paper

    try:
        records = results.load_records(_json_files(files, results_dir))
    except results.ResultsError as err:
        raise click.ClickException(str(err)) from None
    tables = {Path(t).stem: pd.read_csv(t) for t in table_files}
    try:
        paper = Paper(path=paper_path)
    except (OSError, ValueError) as err:
        raise click.ClickException(f"paper numbers: {err}") from None
    verdicts = None
    if efficiency_path:
        from pecker import io

        verdicts = io.read_json(efficiency_path).get("verdicts", [])
    result = aud.audit(tables, records, paper, verdicts)
    aud.write_audit(result, out_md, out_json)
    if not quiet:
        click.echo(aud.render_markdown(result))
    s = result["summary"]
    click.echo(f"audit: {s['cells']} cells, {s['substitute']} flagged substitute, {s['cross_dataset']} cross-dataset, "
               f"{s['missing_provenance']} with missing provenance -> {out_md}, {out_json}", err=True)
    for ds, note in result["datasets"].items():
        click.echo(f"audit: {note}", err=True)
    if result["missing_cells"] and not allow_missing:
        raise click.ClickException("cells with missing provenance: " + ", ".join(result["missing_cells"]))
