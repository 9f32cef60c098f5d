"""Table 1 (class forgetting) and the ablation table, as CSV, Markdown and LaTeX.

Rows are (dataset, method) over the *final* EMA generators (``final.json``); each numeric column is
the mean over seeds with its 95% Student-t interval (:func:`pecker.report.stats.t_interval`), its
sample standard deviation (ddof 1) and the number of seeds that had a value; a cell of one seed says
so. CSV columns: ``<key>_mean``, ``<key>_lo``, ``<key>_hi``, ``<key>_std``, ``<key>_n`` per key of
:data:`COLUMNS` (``is`` is the JSONs' ``is_mean``, ``kid`` their ``kid_mean``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from pecker import io
from pecker.report import stats
from pecker.report.results import BASELINES, MAIN_METHODS, TEACHER, order_methods


@dataclass(frozen=True)
class Column:
    key: str          # table key (CSV prefix)
    source: str       # column of results.to_frame
    label: str        # Markdown / LaTeX header
    better: str | None
    fmt: str


COLUMNS = (
    Column("ua", "ua", "UA (%)", "higher", ".2f"),
    Column("fid", "fid", "FID", "lower", ".2f"),
    Column("is", "is_mean", "IS", "higher", ".2f"),
    Column("precision", "precision", "Precision", "higher", ".4f"),
    Column("recall", "recall", "Recall", "higher", ".4f"),
    Column("kid", "kid_mean", "KID", "lower", ".4f"),
    Column("retained_accuracy", "retained_accuracy", "Retained acc.", "higher", ".4f"),
    Column("steps", "train_steps", "Steps", None, ",.0f"),
    Column("images_seen", "images_seen", "Images seen", None, ",.0f"),
    Column("wall_clock_s", "wall_clock_s", "Wall-clock (s)", None, ",.0f"),
)
COLUMN_BY_KEY = {c.key: c for c in COLUMNS}
ARROW = {"higher": ("↑", r"$\uparrow$"), "lower": ("↓", r"$\downarrow$"), None: ("", "")}
DASH = "–"
NO_ABLATION = "No ablation runs were configured: only {methods} were evaluated{where}."


def _flag(values: pd.Series):
    vals = {v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))}
    if not vals:
        return None
    return bool(vals.pop()) if len(vals) == 1 else "mixed"


def build_table1(df: pd.DataFrame, level: float = 0.95) -> pd.DataFrame:
    """Aggregate the final rows of :func:`results.to_frame` into Table 1 (one row per dataset and method)."""
    fin = df[df["final"]]
    rows = []
    for ds in sorted(fin["dataset"].unique()):
        sub = fin[fin["dataset"] == ds]
        for method in order_methods(sub["method"]):
            g = sub[sub["method"] == method].sort_values("seed")
            row = {"dataset": ds, "method": method, "n_seeds": int(g["seed"].nunique()),
                   "seeds": ",".join(str(s) for s in sorted(g["seed"].unique())), "data_free": _flag(g["data_free"])}
            for c in COLUMNS:
                iv = stats.t_interval(pd.to_numeric(g[c.source], errors="coerce"), level)
                for part in ("mean", "lo", "hi", "std", "n"):
                    row[f"{c.key}_{part}"] = iv[part]
            rows.append(row)
    cols = ["dataset", "method", "n_seeds", "seeds", "data_free"]
    cols += [f"{c.key}_{s}" for c in COLUMNS for s in ("mean", "lo", "hi", "std", "n")]
    return pd.DataFrame(rows, columns=cols)


def ablation_datasets(table: pd.DataFrame) -> list[str]:
    """Datasets with at least one unlearning method besides sfd, pecker and the baselines."""
    extra = table[~table["method"].isin((TEACHER, *MAIN_METHODS, *BASELINES))]
    return sorted(extra["dataset"].unique())


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in (d or {}).items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def method_settings_text(cfg: dict | None, dataset: str, method: str, reference: str = "pecker") -> str:
    """The method's config entry as ``key=value`` pairs that differ from the ``reference`` method's."""
    if cfg is None:
        return ""
    methods = ((cfg.get("datasets") or {}).get(dataset) or {}).get("unlearn", {}).get("methods") or {}
    if method not in methods:
        return "(not in the config)"
    if method == reference:
        return "reference"
    mine = _flatten(methods[method])
    ref = _flatten(methods.get(reference) or {})
    diff = {k: v for k, v in mine.items() if ref.get(k, object()) != v}
    diff.update({k: "(default)" for k in ref if k not in mine})
    return ", ".join(f"{k}={v}" for k, v in sorted(diff.items())) or f"same as {reference}"


def build_ablation(table: pd.DataFrame, cfg: dict | None = None) -> pd.DataFrame:
    """The unlearning methods of the datasets that have variants, with their settings and UA / FID vs PECKER."""
    keep = table[table["dataset"].isin(ablation_datasets(table))
                 & ~table["method"].isin((TEACHER, *BASELINES))].copy()
    keep.insert(2, "settings", [method_settings_text(cfg, r.dataset, r.method) for r in keep.itertuples()])
    for key in ("ua", "fid"):
        ref = keep[keep["method"] == "pecker"].set_index("dataset")[f"{key}_mean"]
        keep[f"{key}_minus_pecker"] = keep[f"{key}_mean"] - keep["dataset"].map(ref).astype(float)
    return keep.reset_index(drop=True)


# ----------------------------------------------------------------------------- formatting


def _isnan(v) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def format_cell(mean, lo, hi, n, fmt: str, n_seeds: int | None = None) -> str:
    """``mean [lo, hi]`` (the interval over seeds), ``mean (1 seed)`` or a dash."""
    if _isnan(mean):
        return DASH
    text = format(mean, fmt)
    if n and n > 1 and not _isnan(lo) and not _isnan(hi):
        text += f" [{format(lo, fmt)}, {format(hi, fmt)}]"
    elif n == 1:
        text += " (1 seed)"
    if n_seeds and n and 1 < n < n_seeds:
        text += f" (n={n})"
    return text


def _flag_text(v) -> str:
    return {True: "yes", False: "no", None: DASH}.get(v, str(v)) if not isinstance(v, str) else v


def display_frame(table: pd.DataFrame, latex: bool = False, extra: tuple[str, ...] = ()) -> pd.DataFrame:
    """Human-readable strings: ``mean ± std`` per metric, headers with the better-direction arrow."""
    def head(label: str, better: str | None = None) -> str:
        text = latex_escape(label) if latex else label
        return f"{text} {ARROW[better][1 if latex else 0]}".strip()

    out = pd.DataFrame({"Method": table["method"].astype(str)})
    for c in COLUMNS[:7]:
        out[head(c.label, c.better)] = [
            format_cell(r[f"{c.key}_mean"], r[f"{c.key}_lo"], r[f"{c.key}_hi"], r[f"{c.key}_n"], c.fmt, r["n_seeds"])
            for _, r in table.iterrows()]
    out["Data-free"] = [_flag_text(v) for v in table["data_free"]]
    for c in COLUMNS[7:]:
        out[head(c.label)] = [format_cell(r[f"{c.key}_mean"], r[f"{c.key}_lo"], r[f"{c.key}_hi"], r[f"{c.key}_n"],
                                          c.fmt, r["n_seeds"]) for _, r in table.iterrows()]
    out["Seeds"] = table["n_seeds"].astype(int).astype(str).values
    for key in extra:
        if key == "settings":
            out.insert(1, "Settings", table["settings"].values)
        else:
            c = COLUMN_BY_KEY[key.split("_minus_")[0]]
            out[head(f"Δ{c.label.split(' ')[0]} vs pecker")] = [
                DASH if (v is None or math.isnan(v)) else format(v, "+" + c.fmt) for v in table[key]]
    return out.reset_index(drop=True)


def markdown_table(frame: pd.DataFrame) -> str:
    """GitHub Markdown of a string frame (pandas' to_markdown when tabulate is importable)."""
    try:
        return frame.to_markdown(index=False, disable_numparse=True)
    except ImportError:  # tabulate missing: the same pipe table, written here
        cells = [list(frame.columns)] + frame.astype(str).values.tolist()
        esc = [[str(x).replace("|", r"\|") for x in row] for row in cells]
        lines = ["| " + " | ".join(esc[0]) + " |", "|" + "|".join("---" for _ in esc[0]) + "|"]
        lines += ["| " + " | ".join(r) + " |" for r in esc[1:]]
        return "\n".join(lines)


_LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def latex_escape(text: str) -> str:
    text = "".join(_LATEX_SPECIAL.get(ch, ch) for ch in str(text))
    return text.replace("±", r"$\pm$").replace("–", "--").replace("Δ", r"$\Delta$")


def latex_table(frame: pd.DataFrame, caption: str, label: str) -> str:
    body = frame.map(latex_escape)
    return body.to_latex(index=False, escape=False, caption=latex_escape(caption), label=label,
                         column_format="".join("l" if c in ("Method", "Settings") else "r" for c in frame.columns), position="htbp")


# ----------------------------------------------------------------------------- writers


def _datasets_note(dataset: str, paper_datasets: dict | None) -> str:
    if paper_datasets is None or dataset in paper_datasets:
        return ""
    return (f"Dataset `{dataset}` is not one of the paper's datasets: compare with the paper only as a "
            "cross-dataset comparison (see the audit).")


def write_table(table: pd.DataFrame, out_dir: str | Path, name: str, title: str,
                extra: tuple[str, ...] = (), paper_datasets: dict | None = None,
                empty_note: str | None = None) -> dict[str, Path]:
    """``{name}.csv`` (numbers), ``{name}.md`` and ``{name}.tex`` (one block per dataset)."""
    out_dir = Path(out_dir)
    paths = {ext: out_dir / f"{name}.{ext}" for ext in ("csv", "md", "tex")}
    with io.atomic_path(paths["csv"]) as tmp:
        table.to_csv(tmp, index=False, float_format="%.10g")
    md = [f"# {title}", ""]
    tex = [f"% {title}", "% written by `pecker report tables`; needs \\usepackage{booktabs}", ""]
    if table.empty:
        note = empty_note or "No results."
        md += [note, ""]
        tex += [f"% {note}", latex_escape(note), ""]
    for ds in table["dataset"].unique():
        sub = table[table["dataset"] == ds]
        frame = display_frame(sub, extra=extra)
        md += [f"## {ds}", ""]
        if note := _datasets_note(ds, paper_datasets):
            md += [note, ""]
        md += [markdown_table(frame), ""]
        tex += [latex_table(display_frame(sub, latex=True, extra=extra), f"{title}: {ds}",
                            f"tab:{name}-{ds}"), ""]
    if not table.empty:
        md += [f"Mean [95% {stats.METHOD_T}] (n seeds in the last column; '(1 seed)' where one seed had a value, "
               "'(n=k)' where fewer seeds than run had one). "
               "UA in percent of forget-class samples not classified as the forget class; FID/KID/precision/"
               "recall on retained-class samples; `–` = not computed.", ""]
    io.atomic_write_text(paths["md"], "\n".join(md))
    io.atomic_write_text(paths["tex"], "\n".join(tex))
    return paths


def write_tables(df: pd.DataFrame, out_dir: str | Path, cfg: dict | None = None,
                 paper_datasets: dict | None = None) -> dict[str, Path]:
    """Table 1, the ablation table and the efficiency table; returns ``{'table1.csv': path, ...}``."""
    from pecker.report.efficiency import write_efficiency

    rcfg = (cfg or {}).get("report") or {}
    level = rcfg.get("interval_level", 0.95)
    t1 = build_table1(df, level)
    written = {}
    for ext, p in write_table(t1, out_dir, "table1", "Table 1: class forgetting",
                              paper_datasets=paper_datasets).items():
        written[f"table1.{ext}"] = p
    abl = build_ablation(t1, cfg)
    methods = ", ".join(order_methods(t1["method"])) or "no methods"
    where = f" (datasets: {', '.join(sorted(t1['dataset'].unique()))})" if len(t1) else ""
    for ext, p in write_table(abl, out_dir, "ablation", "Ablation: unlearning variants",
                              extra=("settings", "ua_minus_pecker", "fid_minus_pecker"),
                              empty_note=NO_ABLATION.format(methods=methods, where=where)).items():
        written[f"ablation.{ext}"] = p
    for ext, p in write_efficiency(df, out_dir, rcfg.get("ua_thresholds", (90.0, 95.0)),
                                   rcfg.get("retained_tolerance", 0.05), rcfg.get("reference_method", "sfd"),
                                   level, rcfg.get("references")).items():
        written[f"efficiency.{ext}"] = p
    return written
