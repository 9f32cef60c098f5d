"""Audit every cell of the produced tables against the paper, with the provenance of our value.

For each cell (table, dataset, method, column) the audit gives our value, the paper's value
(``pecker/report/paper_results.yaml``), the difference, and for every seed behind our value: git commit,
config hash, checkpoint sha256, the evaluator (library and version, as the metric JSON's
``metric_sources`` records them, or the classifier) and the sample count. It flags

- **missing** provenance (any of those absent for a cell that has a value, or a table value that no
  metric JSON supports, or one that differs from the JSONs: a stale table) -> exit status 1;
- **substitute** evaluation: a metric the JSON marks ``substitute: true`` (classifier trained from
  scratch, IS from classifier logits, ...) and any dataset the paper does not use;
- notes: the feature extractor of FID-type metrics (a PyTorch port of the paper's TF evaluator),
  cross-checks with a second implementation, a dirty git tree, the paper's known anomalies.

Datasets the paper does not use (mnist, mnist-tiny, ...) are compared with the paper's
``cross_dataset_reference`` rows (CIFAR-10), labelled as a cross-dataset comparison.

Tables 2-3 (``table2``, ``table3``: the text datasets' concept forgetting) are audited by
:func:`pecker.report.concept.audit_cells` against the paper's Stable Diffusion cells: ours in percent, the
rows matched teacher <-> SD v1.4, sld <-> SLD-Medium, SFD <-> SFD-Two-Stage (flagged one-stage without
``init_from``), PECKER <-> PECKER (100k images), the i-th celebrity task <-> the paper's i-th celebrity;
every entry of the JSONs' ``substitutes`` is flagged, and the same provenance is required. The metric
JSONs of text datasets (they carry ``tasks``) never enter the Table 1 cells.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd

from pecker import io
from pecker.report.paper import Paper
from pecker.report.results import nested_get
from pecker.report.tables import COLUMN_BY_KEY, DASH, markdown_table

FIDELITY = ("fid", "kid_mean", "kid_std", "precision", "recall")
CLASSIFIER = ("ua", "retained_accuracy")
TRAINING = ("steps", "images_seen", "wall_clock_s")
REL_TOL = 1e-6


@dataclass
class Cell:
    table: str
    dataset: str
    method: str
    column: str
    metric: str | None
    ours: float | bool | str | None
    ours_std: float | None = None
    n: int = 0
    ours_lo: float | None = None
    ours_hi: float | None = None
    paper: float | bool | None = None
    diff: float | None = None
    comparison: str = ""
    cross_dataset: bool = False
    provenance: list[dict] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    substitute: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return f"{self.table} {self.dataset}/{self.method}/{self.column}"


def _isnan(v) -> bool:
    """None, NaN or pandas' NA."""
    if v is None:
        return True
    try:
        return bool(pd.isna(v))
    except (TypeError, ValueError):
        return False


def _short(h, n: int = 12):
    return None if not h else str(h)[:n]


def _library(src: dict) -> str:
    """``library version`` of a source record (``{"library", "version", "function"[, "note"]}``)."""
    return " ".join(str(src.get(k) or "?") for k in ("library", "version"))


def _source_missing(src: dict, metric: str, keys=("library", "version", "function")) -> list[str]:
    return [f"metric_sources.{metric}.{k}" for k in keys if not src.get(k)]


def _n_retained(rec: dict) -> int | None:
    classes = nested_get(rec, "samples", "retained_classes") or nested_get(rec, "reference", "classes")
    return len(classes) if isinstance(classes, list) else None


def evaluator_of(rec: dict, metric: str) -> tuple[str | None, list[str], list[str], list[str]]:
    """``(evaluator text or None, missing fields, substitute reasons, notes)`` of one metric in one JSON."""
    src = nested_get(rec, "metric_sources", metric)
    if metric is None:
        return None, [], [], []
    if not isinstance(src, dict):
        return None, [f"metric_sources.{metric}"], [], []
    missing, subst, notes = [], [], []
    if metric in CLASSIFIER:
        clf = src.get("classifier") or {}
        arch = nested_get(clf, "arch", "name") or (clf.get("arch") if isinstance(clf.get("arch"), str) else None)
        if not clf.get("sha256"):
            missing.append(f"metric_sources.{metric}.classifier.sha256")
        text = f"classifier {arch or '?'} sha256:{_short(clf.get('sha256'), 8)}"
        if clf.get("heldout_accuracy") is not None:
            text += f" (held-out acc. {clf['heldout_accuracy']:.3f})"
        if src.get("substitute") or clf.get("substitute"):
            subst.append(f"classifier {arch or '?'} instead of the paper's ImageNet-pretrained ResNet-34")
    elif metric in FIDELITY:
        missing += _source_missing(src, metric)
        text = _library(src)
        ext = src.get("extractor")
        if ext:
            text += f", extractor {ext}"
            notes.append(f"feature extractor {ext} (sha256:{_short(src.get('extractor_sha256'), 8)}), a PyTorch "
                         "port; the paper used OpenAI's TensorFlow evaluator")
        else:
            missing.append(f"metric_sources.{metric}.extractor")
        if src.get("substitute"):
            subst.append(f"{metric} evaluated with a substitute ({text})")
        cc = src.get("cross_check")
        if isinstance(cc, dict):
            val, ours = cc.get("value", cc.get(metric)), nested_get(rec, "metrics", metric)
            text_cc = f"{rec.get('method')} seed {rec.get('seed')}: cross-check {_library(cc)}"
            if cc.get("function"):
                text_cc += f" ({cc['function']})"
            if isinstance(val, (int, float)):
                text_cc += f" gives {val:.6g}"
                if isinstance(ours, (int, float)):
                    text_cc += f" (ours {ours:.6g}, difference {val - ours:+.3g})"
            else:
                text_cc += " (no value recorded for this metric)"
            notes.append(text_cc)
    else:  # is_mean and any other metric
        origin = src.get("source") or src.get("library")
        if not origin:
            missing.append(f"metric_sources.{metric}.source")
        lib = " ".join([_library(src)] + ([str(src["function"])] if src.get("function") else [])) \
            if src.get("library") else None
        text = ", ".join(str(x) for x in (src.get("source"), lib) if x) or None
        if src.get("substitute"):
            subst.append(f"{metric} from {origin or '?'} instead of the paper's Inception network")
    return text, missing, subst, notes


def sample_count(rec: dict, metric: str) -> str | None:
    src = nested_get(rec, "metric_sources", metric) or {}
    s = rec.get("samples") or {}
    if metric in ("ua",):
        n = src.get("n", s.get("n_forget"))
        return None if n is None else f"{n} forget-class samples"
    k = _n_retained(rec)
    n_gen = src.get("n_gen", src.get("n"))
    if n_gen is None and s.get("per_class") is not None and k:
        n_gen = s["per_class"] * k
    if n_gen is None:
        return None
    if metric in FIDELITY:
        n_ref = src.get("n_ref", nested_get(rec, "reference", "n_images"))
        return f"{n_gen} generated vs {n_ref if n_ref is not None else '?'} reference"
    return f"{n_gen} retained-class samples"


def record_provenance(rec: dict, metric: str | None) -> tuple[dict, list[str], list[str], list[str]]:
    """``(provenance row, missing, substitute, notes)`` of one JSON for one cell."""
    missing = []
    commit = nested_get(rec, "provenance", "git", "commit")
    cfg = nested_get(rec, "provenance", "config_hash")
    ckpt = nested_get(rec, "checkpoint", "sha256")
    for val, name in ((commit, "provenance.git.commit"), (cfg, "provenance.config_hash"), (ckpt, "checkpoint.sha256")):
        if not val:
            missing.append(name)
    evaluator, m2, subst, notes = evaluator_of(rec, metric) if metric else ("training record", [], [], [])
    samples = sample_count(rec, metric) if metric else None
    if metric and samples is None:
        m2.append("sample count (samples / metric_sources.n)")
    if nested_get(rec, "provenance", "git", "dirty"):
        notes.append(f"{rec.get('method')} seed {rec['seed']}: produced from a dirty git tree")
    row = {"method": rec.get("method"), "seed": rec["seed"], "path": rec.get("_path"), "commit": commit,
           "dirty": nested_get(rec, "provenance", "git", "dirty"), "config_hash": cfg, "checkpoint_sha256": ckpt, "checkpoint": nested_get(rec, "checkpoint", "path"),
           "evaluator": evaluator, "samples": samples}
    return row, missing + m2, subst, notes


def _matches(a: float, b: float) -> bool:
    return abs(a - b) <= REL_TOL * max(1.0, abs(a), abs(b))


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


class Auditor:
    def __init__(self, records: list[dict], paper: Paper):
        self.paper = paper
        self.records = [r for r in records if r.get("final")]

    def _records(self, dataset: str, method: str) -> list[dict]:
        return sorted((r for r in self.records if str(r["dataset"]) == dataset and str(r["method"]) == method),
                      key=lambda r: r["seed"])

    @staticmethod
    def _value(rec: dict, column: str):
        if column == "data_free":
            return rec.get("data_free")
        if column in TRAINING:
            tr = rec.get("training") or {}
            if column == "steps":
                return tr.get("steps")
            if column == "images_seen":
                return rec.get("images_seen") if rec.get("images_seen") is not None else tr.get("images_seen")
            return tr.get(column)
        return nested_get(rec, "metrics", COLUMN_BY_KEY[column].source)

    def cell(self, table: str, row: pd.Series, column: str) -> Cell:
        ds, method = str(row["dataset"]), str(row["method"])
        derived = column.endswith("_minus_pecker")
        base = column.split("_minus_")[0]
        metric = None if base in TRAINING or base == "data_free" else COLUMN_BY_KEY[base].source
        if base == "data_free":
            ours = row.get("data_free")
            if _isnan(ours):
                ours = None
            elif isinstance(ours, str):
                ours = {"true": True, "false": False}.get(ours.lower(), ours)
            else:
                ours = bool(ours)
            std, n, lo, hi = None, 0, None, None
        else:
            key = column if derived else f"{column}_mean"
            ours = None if _isnan(row.get(key)) else float(row[key])
            std = None if derived or _isnan(row.get(f"{column}_std")) else float(row[f"{column}_std"])
            n = 0 if derived or _isnan(row.get(f"{column}_n")) else int(row[f"{column}_n"])
            lo, hi = (None if derived or _isnan(row.get(f"{column}_{e}")) else float(row[f"{column}_{e}"])
                      for e in ("lo", "hi"))
        match = self.paper.match(ds, method)
        c = Cell(table, ds, method, column, metric, ours, std, n, lo, hi, cross_dataset=match.cross_dataset,
                 comparison=match.label)
        if base in ("ua", "fid", "is", "precision", "data_free"):
            pkey = "is_mean" if base == "is" else base
            pval = match.row.get(pkey) if match.row else None
            if derived:
                ref = self.paper.match(ds, "pecker")
                pref = ref.row.get(pkey) if ref.row else None
                pval = None if pval is None or pref is None else round(pval - pref, 10)
            else:
                c.notes += self.paper.anomaly_notes(match.paper_dataset, match.paper_method, pkey)
            c.paper = pval
            if match.row is not None and pval is None:
                c.notes.append(f"the paper's cell ({match.paper_dataset} / {match.paper_method} {pkey}) is empty")
        else:
            c.comparison = "not reported in the paper"
        if isinstance(c.ours, float) and isinstance(c.paper, (int, float)) and not isinstance(c.paper, bool):
            c.diff = c.ours - float(c.paper)
        if c.cross_dataset:
            c.substitute.append(f"dataset {ds} is not a paper dataset: cross-dataset comparison with "
                                f"{match.paper_dataset}")
        if c.ours is None:
            c.notes.append("not computed")
            return c
        recs = self._records(ds, method)
        if derived:
            recs = recs + self._records(ds, "pecker")
        recs = [r for r in recs if self._value(r, base) is not None]
        if not recs:
            c.missing.append("no metric JSON supports this value")
            return c
        if not derived and isinstance(c.ours, float):
            vals = [float(self._value(r, base)) for r in recs]
            if not _matches(_mean(vals), c.ours):
                c.missing.append(f"stale table: the metric JSONs give {_mean(vals):.6g}, the table {c.ours:.6g}")
        for r in recs:
            prov, missing, subst, notes = record_provenance(r, metric)
            c.provenance.append(prov)
            c.missing += [f"{m} ({r.get('method')} seed {r['seed']}, {r.get('_path')})" for m in missing]
            for s in subst:
                if s not in c.substitute:
                    c.substitute.append(s)
            for s in notes:
                if s not in c.notes:
                    c.notes.append(s)
            for x in r.get("substitutes") or []:  # a dataset substitute the name mapping did not catch
                if str(x).lower().startswith("dataset") and not c.cross_dataset and str(x) not in c.substitute:
                    c.substitute.append(str(x))
        return c

    def audit_table(self, name: str, table: pd.DataFrame) -> list[Cell]:
        cols = [c.key for c in COLUMN_BY_KEY.values() if f"{c.key}_mean" in table.columns]
        cols += ["data_free"] if "data_free" in table.columns else []
        cols += [c for c in table.columns if c.endswith("_minus_pecker")]
        return [self.cell(name, row, col) for _, row in table.iterrows() for col in cols]


# ----------------------------------------------------------------------------- report


def _fmt(v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return DASH
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)


def _join(values) -> str:
    vals = list(dict.fromkeys(str(v) if v else "MISSING" for v in values))
    return "; ".join(vals) if vals else DASH


def audit(tables: dict[str, pd.DataFrame], records: list[dict], paper: Paper, verdicts: list[dict] | None = None) -> dict:
    """All cells of ``tables`` (name -> CSV frame) with the summary and the datasets' comparison notes;
    ``verdicts`` (from ``efficiency.json``) are listed next to the paper's claims."""
    from pecker.report import concept

    class_records = [r for r in records if not r.get("tasks")]  # text datasets: Tables 2-3 only
    auditor = Auditor(class_records, paper)
    cells = [c for name, t in tables.items()
             for c in (concept.audit_cells(name, t, records, paper) if name in concept.TABLES
                       else auditor.audit_table(name, t))]
    datasets = sorted({c.dataset for c in cells})
    dataset_notes = {}
    for ds in datasets:
        if all(c.table in concept.TABLES for c in cells if c.dataset == ds):
            subst = any(r.get("substitutes") for r in records if str(r["dataset"]) == ds and r.get("tasks"))
            dataset_notes[ds] = (
                f"Dataset {ds} is a text-to-image analogue: its Table 2-3 cells stand next to the paper's Stable "
                "Diffusion cells as an analogue, not a reproduction (see the substitutes)." if subst else
                f"Dataset {ds} is a text-to-image dataset without recorded substitutes: its Table 2-3 cells are "
                "compared with the paper's Stable Diffusion cells.")
            continue
        pds, cross = paper.paper_dataset(ds)
        dataset_notes[ds] = (
            f"Dataset {ds} is not in the paper. Its cells are compared with the paper's {pds} rows: this is a "
            f"cross-dataset comparison ({ds} vs {pds}), so the differences are not reproduction errors."
            if cross else f"Dataset {ds} is compared with the paper's {pds} rows (same dataset).")
    missing = [c for c in cells if c.missing]
    return {
        "paper": paper.path,
        "tables": list(tables),
        "substitutes_recorded": {ds: sorted({str(x) for r in records if str(r["dataset"]) == ds
                                             for x in r.get("substitutes") or []}) for ds in datasets},
        "datasets": dataset_notes,
        "summary": {"cells": len(cells), "missing_provenance": len(missing),
                    "substitute": sum(1 for c in cells if c.substitute),
                    "with_paper_value": sum(1 for c in cells if c.paper is not None),
                    "cross_dataset": sum(1 for c in cells if c.cross_dataset)},
        "missing_cells": [c.name for c in missing],
        "paper_anomalies": {t: paper.anomalies(t) for t in ("table1", "table2", "table3")},
        "claims": [{**claim, "ours": [v["text"] for v in verdicts or [] if v.get("method") in claim.get("methods", [])
                                      or not claim.get("methods")]} for claim in paper.claims],
        "cells": [asdict(c) | {"name": c.name} for c in cells],
        "_cells": cells,
    }


def render_markdown(result: dict) -> str:
    cells: list[Cell] = result["_cells"]
    s = result["summary"]
    out = ["# Audit: our tables against the paper", "",
           f"Paper numbers: `{result['paper']}`. Tables audited: {', '.join(result['tables']) or 'none'}.", "",
           f"{s['cells']} cells; {s['with_paper_value']} with a paper value; {s['substitute']} flagged as evaluated "
           f"with a substitute; {s['cross_dataset']} cross-dataset; **{s['missing_provenance']} with missing "
           "provenance**.", ""]
    for ds, note in result["datasets"].items():
        out += [f"- **{ds}**: {note}"]
        subs = result["substitutes_recorded"].get(ds) or []
        if subs:
            out += [f"  Substitutes recorded by its evaluations: {'; '.join(subs)}."]
    out += [""]
    if result["missing_cells"]:
        out += ["## Missing provenance (the audit fails)", ""]
        out += [f"- `{c.name}`: {'; '.join(c.missing)}" for c in cells if c.missing]
        out += [""]
    for table in result["tables"]:
        for ds in result["datasets"]:
            sub = [c for c in cells if c.table == table and c.dataset == ds]
            if not sub:
                continue
            out += [f"## {table}: {ds}", "", result["datasets"][ds], ""]
            rows = []
            for c in sub:
                flags = (["MISSING PROVENANCE"] if c.missing else []) + (["SUBSTITUTE"] if c.substitute else [])
                rows.append({
                    "method": c.method, "column": c.column,
                    "ours": _fmt(c.ours) + (f" [{c.ours_lo:.4g}, {c.ours_hi:.4g}]" if c.ours_lo is not None
                                            and c.ours_hi is not None else "")
                    + (f" (n={c.n})" if c.n > 1 else " (1 seed)" if c.n == 1 else ""),
                    "paper": _fmt(c.paper), "diff": f"{c.diff:+.4g}" if c.diff is not None else DASH,
                    "comparison": c.comparison,
                    "commit": _join(_short(p["commit"]) for p in c.provenance) if c.provenance else DASH,
                    "config": _join(p["config_hash"] for p in c.provenance) if c.provenance else DASH,
                    "checkpoint": _join(_short(p["checkpoint_sha256"]) for p in c.provenance) if c.provenance else DASH,
                    "evaluator": _join(p["evaluator"] for p in c.provenance) if c.provenance and c.metric else
                    ("training record" if c.provenance else DASH),
                    "samples": _join(p["samples"] for p in c.provenance) if c.provenance and c.metric else DASH,
                    "flags": ", ".join(flags) or "ok",
                    "notes": " | ".join(c.substitute + c.notes + (c.missing if c.missing else [])) or "",
                })
            out += [markdown_table(pd.DataFrame(rows)), ""]
    if result.get("claims"):
        out += ["## The paper's claims and what this pipeline measured", ""]
        for claim in result["claims"]:
            out += [f"- **Paper ({claim['id']})**: {' '.join(str(claim['text']).split())}"]
            out += [f"  - ours: {t}" for t in claim["ours"]] or ["  - ours: not measured (no efficiency verdicts)"]
        out += [""]
    out += ["## Known anomalies in the paper's numbers (reported, not corrected)", ""]
    for table, items in result["paper_anomalies"].items():
        for a in items:
            out += [f"- {table} `{a['id']}`: {' '.join(str(a['note']).split())}"]
    return "\n".join(out) + "\n"


def write_audit(result: dict, out_md: str | Path, out_json: str | Path) -> None:
    io.atomic_write_text(out_md, render_markdown(result))
    io.atomic_write_json(out_json, {k: v for k, v in result.items() if k != "_cells"})
