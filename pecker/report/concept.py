"""Tables 2-3 and Figs 4-6 (concept forgetting) from the metric JSONs and sample grids of the text
datasets, and the audit cells of Tables 2-3 (docs/method.md section 6).

**Tables.** Table 2 covers the ``celebrity`` tasks, Table 3 the ``nudity`` tasks of every text dataset.
One row per (dataset, model, task), in this order: the teacher ("SD v1.4 analogue (teacher,
multi-step)": the multi-step teacher through diffusers' pipeline), SLD-Medium, then every SFD-loop
method of that task, named "SFD" (``mask.enabled`` false) or "PECKER" (true) with its images seen, e.g.
"PECKER (1.2k images)". Each numeric cell is the mean over the seeds' final evaluations with its
Student-t interval (:func:`pecker.report.stats.t_interval`) when two or more seeds have a value; a cell
of one seed says so. The CSV holds fractions in [0, 1] (``<metric>_mean|lo|hi|std|n``); Markdown and
LaTeX print percent.

**Audit.** Our rows meet the paper's (``tables.table{2,3}.our_rows`` of ``paper_results.yaml``): teacher
<-> SD v1.4, sld <-> SLD-Medium, SFD <-> SFD-Two-Stage (flagged one-stage unless the method has
``init_from``), PECKER <-> PECKER (100k images). In Table 2 a dataset's i-th celebrity task (config
order, the CSV's ``task_index``) meets the paper's i-th celebrity (``tables.table2.celebrities``).

**Figures.** Fig. 4 (each celebrity task) and Fig. 6 (each nudity task): for every PECKER and SFD run
of the task (lowest seed), the checkpoints nearest to 0/20/40/60/80/100% of its steps, one row each,
labelled with the images seen (from the metric JSONs: step x images per step). Fig. 5: the teacher,
SLD-Medium, SFD and PECKER on the nudity task's final grids. Columns are the grid's prompts (the same
prompt and seed in every row); 16x16 samples are enlarged by nearest-neighbour repetition.
"""

from __future__ import annotations

import logging
import math
import re
import textwrap
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from pecker import io
from pecker.report import stats
from pecker.report.audit import _isnan
from pecker.report.tables import DASH, latex_escape, markdown_table

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Metric:
    key: str      # key of the JSON's metrics.<task> and CSV prefix
    label: str    # Markdown / LaTeX header and audit column
    paper: str    # metric key in paper_results.yaml
    real: str = ""  # the key an evaluation with the paper's detectors writes (GCD: share_without_faces, gcd)

    def value(self, task_metrics: dict):
        """This metric of one evaluation's task: the embedded key, else the paper detectors' key."""
        v = task_metrics.get(self.key)
        return task_metrics.get(self.real) if v is None and self.real else v


TABLES = {
    "table2": ("celebrity", (Metric("share_without_object", "share w/o object (faces)", "share_without_faces",
                                    "share_without_faces"),
                             Metric("gcd_analogue", "GCD analogue", "gcd", "gcd"))),
    "table3": ("nudity", (Metric("inappropriate_probability", "inappropriate probability", "inappropriate_probability"),
                          Metric("max_expected_inappropriateness", "max expected inappropriateness",
                                 "max_expected_inappropriateness"))),
}
TABLE_METRICS = TABLES  # the table names the audit hands to this module
TITLES = {"table2": "Table 2: celebrity forgetting (lower is better)",
          "table3": "Table 3: nudity forgetting, I2P-style 'sexual' prompts (lower is better)"}
KIND_ORDER = {"teacher": 0, "sld": 1, "sid-lsg": 2, "sid-lsg-neg": 3, "esd-x": 4, "esd-u": 4, "sa": 5, "sfd": 6,
              "pecker": 7}
TEACHER_LABEL = "SD v1.4 analogue (teacher, multi-step)"
SLD_LABEL = "SLD-Medium"
# Defaults when paper_results.yaml lacks the mapping keys.
PAPER_ROWS = {"teacher": "SD v1.4", "sld": "SLD-Medium", "sid-lsg": "SiD-LSG", "sid-lsg-neg": "SiD-LSG-Neg",
              "esd-x": "ESD-x", "esd-u": "ESD-u", "sa": "SA", "sfd": "SFD-Two-Stage", "pecker": "PECKER"}
PAPER_CELEBRITIES = ({"key": "brad_pitt", "name": "Brad Pitt"}, {"key": "angelina_jolie", "name": "Angelina Jolie"})
FRACTIONS = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
_TYPE_OF_METRIC = {"share_without_object": "celebrity", "inappropriate_probability": "nudity"}


def concept_records(records: list[dict]) -> list[dict]:
    """The final evaluations of text datasets (they carry ``tasks``)."""
    return [r for r in records if r.get("final") and r.get("tasks")]


def images_text(n) -> str:
    """``1200`` -> ``'1.2k'``, ``100000`` -> ``'100k'``, ``800`` -> ``'800'``."""
    n = float(n)
    if n >= 1e6:
        return f"{n / 1e6:.3g}M"
    if n >= 1e3:
        return f"{n / 1e3:.3g}k"
    return f"{n:.0f}"


def model_label(kind: str, images_seen=None) -> str:
    if kind == "teacher":
        return TEACHER_LABEL
    if kind == "sld":
        return SLD_LABEL
    if kind == "sid-lsg":
        return "SiD-LSG (the starting generator, as is)"
    if kind == "sid-lsg-neg":
        return "SiD-LSG-Neg (our reading)"
    if kind.startswith("esd"):
        return kind.upper().replace("ESD-X", "ESD-x").replace("ESD-U", "ESD-u")
    if kind == "sa":
        return "SA"
    name = "PECKER" if kind == "pecker" else "SFD"
    return name if _isnan(images_seen) else f"{name} ({images_text(images_seen)} images)"


# ----------------------------------------------------------------------------- what the rows are


class DatasetView:
    """A text dataset's tasks and methods: from its config, or (no config) from the metric JSONs."""

    def __init__(self, dataset: str, cfg_ds: dict | None, records: list[dict] = ()):
        self.dataset = dataset
        unl = (cfg_ds or {}).get("unlearn") or {}
        self.unlearn = unl
        self.from_config = bool(unl.get("tasks"))
        if self.from_config:
            self.tasks = dict(unl["tasks"])
        else:  # the JSONs' task names; the type from the metric keys
            self.tasks = {}
            for r in records:
                for name, m in (r.get("metrics") or {}).items():
                    kind = next((t for k, t in _TYPE_OF_METRIC.items() if isinstance(m, dict) and k in m), None)
                    if kind and name not in self.tasks:
                        self.tasks[name] = {"type": kind, "label": None}
        self.methods = dict(unl.get("methods") or {})
        self.evaluate = ((cfg_ds or {}).get("evaluate") or {}).get("concept") or {}

    def tasks_of(self, ttype: str) -> list[str]:
        return [n for n, t in self.tasks.items() if (t or {}).get("type") == ttype]

    def label(self, task: str) -> str:
        return str((self.tasks.get(task) or {}).get("label") or task)

    def kind(self, method: str) -> tuple[str, bool]:
        """``(teacher | sld | sid-lsg | sid-lsg-neg | esd-x | esd-u | sa | sfd | pecker, two_stage)``."""
        if method in ("teacher", "sld"):
            return method, False
        m = self.methods.get(method)
        if m is None and method.startswith("sid_lsg_"):  # rule init_generator: unlearn.generator_init as is
            return "sid-lsg", False
        if (m or {}).get("retain_negative") == "random_keyword":  # our reading of SiD-LSG-Neg
            return "sid-lsg-neg", False
        if (m or {}).get("kind") == "esd":
            return ("esd-x" if m.get("train") == "xattn" else "esd-u"), False
        if (m or {}).get("kind") == "sa":
            return "sa", False
        if m is None:  # no config entry: the method's name says
            return ("pecker" if "pecker" in method.lower() else "sfd"), "two_stage" in method.lower()
        # two-stage: stage 2 of an in-pipeline stage 1 (init_from) or started from a distilled one-step
        # generator (unlearn.generator_init: SiD-LSG, as the official SD code does)
        two = bool((m or {}).get("init_from") or self.unlearn.get("generator_init"))
        return ("pecker" if ((m or {}).get("mask") or {}).get("enabled") else "sfd"), two

    def runs(self, task: str, pecker_first: bool = True) -> list[str]:
        """The SFD-loop methods of ``task`` in the config: PECKER before SFD (or after), then by name."""
        ms = [m for m, x in self.methods.items() if (x or {}).get("task") == task and self.kind(m)[0] in ("sfd", "pecker")]
        return sorted(ms, key=lambda m: ((self.kind(m)[0] == "sfd") == pecker_first, m))

    def steps(self, method: str) -> int | None:
        s = (self.methods.get(method) or {}).get("steps", self.unlearn.get("steps"))
        return int(s) if isinstance(s, (int, float)) else None

    def images_per_step(self) -> int | None:
        b = self.unlearn.get("batch_size")
        if not isinstance(b, int):
            return None
        if self.unlearn.get("images_seen", "retain") == "retain":
            return b
        return b + int(self.unlearn.get("forget_batch_size") or b)


# ----------------------------------------------------------------------------- tables


def build_table(name: str, records: list[dict], cfgs: dict[str, dict], level: float = 0.95) -> pd.DataFrame:
    """One concept table (``table2`` or ``table3``) as numbers (fractions in [0, 1])."""
    ttype, metrics = TABLES[name]
    recs = concept_records(records)
    rows = []
    for ds in sorted({str(r["dataset"]) for r in recs}):
        dr = [r for r in recs if str(r["dataset"]) == ds]
        view = DatasetView(ds, cfgs.get(ds), dr)
        for index, task in enumerate(view.tasks_of(ttype)):
            with_task = [r for r in dr if isinstance((r.get("metrics") or {}).get(task), dict)]
            methods = sorted({str(r["method"]) for r in with_task},
                             key=lambda m: (KIND_ORDER[view.kind(m)[0]], m))
            for m in methods:
                mr = sorted((r for r in with_task if str(r["method"]) == m), key=lambda r: r["seed"])
                kind, two_stage = view.kind(m)
                seen = [float(r["images_seen"]) for r in mr if isinstance(r.get("images_seen"), (int, float))]
                seen_v = (sum(seen) / len(seen)) if seen and kind in ("sfd", "pecker") else math.nan
                row = {"dataset": ds, "method": m, "model": model_label(kind, seen_v), "kind": kind,
                       "two_stage": two_stage, "task": task, "task_label": view.label(task), "task_index": index,
                       "images_seen": seen_v, "n_seeds": len(mr), "seeds": ",".join(str(r["seed"]) for r in mr)}
                for met in metrics:
                    iv = stats.t_interval([met.value(r["metrics"][task]) for r in mr], level)
                    for part in ("mean", "lo", "hi", "std", "n"):
                        row[f"{met.key}_{part}"] = iv[part]
                rows.append(row)
    cols = ["dataset", "method", "model", "kind", "two_stage", "task", "task_label", "task_index", "images_seen",
            "n_seeds", "seeds"]
    cols += [f"{met.key}_{s}" for met in metrics for s in ("mean", "lo", "hi", "std", "n")]
    return pd.DataFrame(rows, columns=cols)


def percent_cell(mean, lo, hi, n, n_seeds: int | None = None) -> str:
    """``12.50% [10.10, 14.90]``, ``12.50% (1 seed)`` or a dash (values are fractions; the interval is
    clipped to [0, 100] %, the CSV keeps it as computed)."""
    if _isnan(mean):
        return DASH
    text = f"{100 * float(mean):.2f}%"
    if n and n > 1 and not _isnan(lo) and not _isnan(hi):
        text += f" [{100 * max(0.0, float(lo)):.2f}, {100 * min(1.0, float(hi)):.2f}]"
    elif n == 1:
        text += " (1 seed)"
    if n_seeds and n and 1 < n < n_seeds:
        text += f" (n={int(n)})"
    return text


def display(table: pd.DataFrame, name: str) -> pd.DataFrame:
    """Strings: Model, Concept (the task's label), one percent column per metric, Seeds."""
    _, metrics = TABLES[name]
    out = pd.DataFrame({"Model": table["model"].astype(str).values, "Concept": table["task_label"].astype(str).values})
    for met in metrics:
        out[f"{met.label} (%) ↓"] = [percent_cell(r[f"{met.key}_mean"], r[f"{met.key}_lo"], r[f"{met.key}_hi"],
                                                  r[f"{met.key}_n"], r["n_seeds"]) for _, r in table.iterrows()]
    out["Seeds"] = table["n_seeds"].astype(int).astype(str).values
    return out


def _substitutes(records: list[dict], dataset: str) -> list[str]:
    return list(dict.fromkeys(str(s) for r in records if str(r["dataset"]) == dataset
                              for s in r.get("substitutes") or []))


def write_table(name: str, table: pd.DataFrame, records: list[dict], out_dir: str | Path,
                level: float = 0.95) -> dict[str, Path]:
    """``{name}.csv`` (fractions), ``{name}.md`` and ``{name}.tex`` (percent, one block per dataset)."""
    out_dir = Path(out_dir)
    paths = {ext: out_dir / f"{name}.{ext}" for ext in ("csv", "md", "tex")}
    with io.atomic_path(paths["csv"]) as tmp:
        table.to_csv(tmp, index=False, float_format="%.10g")
    title = TITLES[name]
    md = [f"# {title}", "",
          "Rows are the analogues of the paper's Stable Diffusion models; a *substitute* is anything that stands "
          "in for the paper's assets (model, detectors, prompts): each dataset lists those its evaluations "
          "record, and the audit flags every cell that rests on one.", ""]
    tex = [f"% {title}", "% written by `pecker report concept-tables`; needs \\usepackage{booktabs}", ""]
    if table.empty:
        ttype = TABLES[name][0]
        note = f"No results: no text dataset has an evaluated {ttype} task."
        md += [note, ""]
        tex += [f"% {note}", latex_escape(note), ""]
    for ds in table["dataset"].unique():
        sub = table[table["dataset"] == ds]
        md += [f"## {ds}", ""]
        subs = _substitutes(records, ds)
        md += (["Substitutes (recorded in its metric JSONs):", ""] + [f"- {s}" for s in subs] if subs
               else ["No substitutes recorded."]) + [""]
        md += [markdown_table(display(sub, name)), ""]
        body = display(sub, name).map(latex_escape)
        body.columns = [latex_escape(c).replace("↓", r"$\downarrow$") for c in body.columns]
        tex += [f"% {ds}: substitutes: " + ("; ".join(subs) if subs else "none"),
                body.to_latex(index=False, escape=False, caption=latex_escape(f"{title}: {ds}"),
                              label=f"tab:{name}-{ds}", column_format="ll" + "r" * (len(body.columns) - 2),
                              position="htbp"), ""]
    if not table.empty:
        md += [f"Percent of the task's images; mean over seeds [{level:.0%} {stats.METHOD_T}, clipped to [0, 100]] or "
               "'(1 seed)'. SFD and "
               "PECKER rows: the final EMA generator, with the images seen during unlearning (counted as the "
               "config's `unlearn.images_seen` says). `–` = not computed.", ""]
    io.atomic_write_text(paths["md"], "\n".join(md))
    io.atomic_write_text(paths["tex"], "\n".join(tex))
    return paths


def write_concept_tables(records: list[dict], cfgs: dict[str, dict], out_dir: str | Path,
                         level: float = 0.95) -> dict[str, Path]:
    """``table2.{csv,md,tex}`` and ``table3.{csv,md,tex}`` in ``out_dir``; ``cfgs``: dataset -> its config
    section (a dataset without one is named from its JSONs: method names decide SFD / PECKER)."""
    recs = concept_records(records)
    for ds in sorted({str(r["dataset"]) for r in recs} - set(cfgs)):
        log.warning("no config for text dataset %s: tasks from its metric JSONs, SFD / PECKER from method names", ds)
    written = {}
    for name in TABLES:
        for ext, p in write_table(name, build_table(name, recs, cfgs, level), recs, out_dir, level).items():
            written[f"{name}.{ext}"] = p
    return written


# ----------------------------------------------------------------------------- audit


def _paper_model(paper, name: str, kind: str) -> tuple[dict | None, str | None]:
    t = paper.data["tables"].get(name) or {}
    model = (t.get("our_rows") or PAPER_ROWS).get(kind)
    for row in t.get("rows") or []:
        if row.get("model") == model:
            return row, model
    return None, model


def _evaluator(rec: dict, metric: str) -> str | None:
    det = rec.get("detectors") or {}
    keys = {"share_without_object": ("object",), "gcd_analogue": ("object", "gcd")}.get(
        metric, ("attribute", "nudenet"))
    parts = []
    for k in keys:
        v = det.get(k)
        if isinstance(v, dict):  # a detector's version record (implementation, package versions, weights)
            sha = v.get("sha256")
            v = " ".join([str(v.get("implementation") or v.get("name") or "")]
                         + [f"{x} {v[x]}" for x in ("nudenet", "facenet_pytorch", "onnxruntime", "version") if v.get(x)]
                         + ([f"sha256:{str(sha)[:8]}"] if sha else [])).strip() or str(v)
        if v:
            parts.append(f"{k}: {v}")
    return "; ".join(parts) or None


def audit_cells(name: str, table: pd.DataFrame, records: list[dict], paper) -> list:
    """The audit cells (:class:`pecker.report.audit.Cell`) of a concept table read back from its CSV:
    ours in percent next to the paper's cell, with every seed's provenance; a cell without a metric
    JSON behind it, or whose JSONs give another value (a stale table), or whose JSONs lack the commit,
    config hash, checkpoint, detectors or image count, is missing provenance."""
    from pecker.report.audit import Cell, record_provenance

    _, metrics = TABLES[name]
    recs = concept_records(records)
    celebrities = list((paper.data["tables"].get("table2") or {}).get("celebrities") or PAPER_CELEBRITIES)
    anomalies = paper.anomalies(name)
    cells = []
    for _, row in table.iterrows():
        ds, method, task, kind = str(row["dataset"]), str(row["method"]), str(row["task"]), str(row["kind"])
        label = str(row.get("task_label") if not _isnan(row.get("task_label")) else task)
        two_stage = str(row.get("two_stage")).lower() == "true"
        prow, pmodel = _paper_model(paper, name, kind)
        celeb = None
        if name == "table2":
            i = int(row["task_index"]) if not _isnan(row.get("task_index")) else None
            celeb = celebrities[i] if i is not None and i < len(celebrities) else None
        support_all = [r for r in recs if str(r["dataset"]) == ds and str(r["method"]) == method
                       and isinstance((r.get("metrics") or {}).get(task), dict)]
        for met in metrics:
            pct = lambda v: None if _isnan(v) else 100 * float(v)  # noqa: E731
            ours = pct(row[f"{met.key}_mean"])
            n = 0 if _isnan(row.get(f"{met.key}_n")) else int(row[f"{met.key}_n"])
            c = Cell(name, ds, f"{method} / {task}", met.label, met.key, ours, pct(row.get(f"{met.key}_std")), n,
                     pct(row.get(f"{met.key}_lo")), pct(row.get(f"{met.key}_hi")))
            if prow is None:
                c.comparison = f"no paper counterpart (ours: {label})"
            elif name == "table2":
                if celeb is None:
                    c.comparison = (f"no paper counterpart: the paper has {len(celebrities)} celebrities "
                                    f"(ours: {label}, celebrity task {int(row['task_index']) + 1})")
                else:
                    c.comparison = f"paper Table 2 / {pmodel} / {celeb['name']} (ours: {label})"
                    c.paper = (prow.get(celeb["key"]) or {}).get(met.paper)
            else:
                c.comparison = f"paper Table 3 / {pmodel} (ours: {label})"
                c.paper = prow.get(met.paper)
            if prow is not None:
                for a in anomalies:
                    if any(x.get("model") == pmodel and x.get("metric") == met.paper for x in a.get("cells", [])):
                        c.notes.append(f"{a['id']}: {' '.join(str(a['note']).split())}")
                if prow.get("images_seen") and not _isnan(row.get("images_seen")):
                    c.notes.append(f"images seen: ours {float(row['images_seen']):,.0f}, the paper's "
                                   f"{float(prow['images_seen']):,.0f}")
            if c.paper is not None and c.ours is not None:
                c.diff = c.ours - float(c.paper)
            if kind == "sid-lsg-neg":
                c.substitute.append("method: our reading of SiD-LSG-Neg (undocumented in the paper): SiD distillation "
                                    "from SiD-LSG, forget terms 0, a random nudity keyword as each retain sample's "
                                    "negative prompt (retain_negative: random_keyword)")
            if kind == "sfd":
                if two_stage:
                    c.notes.append("two-stage SFD (init_from or generator_init), as the paper's SFD-Two-Stage")
                else:
                    c.substitute.append("method: ours is one-stage SFD (no init_from or generator_init); the paper's row is "
                                        "SFD-Two-Stage")
            if c.ours is None:
                c.notes.append("not computed")
                cells.append(c)
                continue
            support = [r for r in support_all if met.value(r["metrics"][task]) is not None]
            if not support:
                c.missing.append("no metric JSON supports this value")
                cells.append(c)
                continue
            mean = sum(100 * float(met.value(r["metrics"][task])) for r in support) / len(support)
            if abs(mean - c.ours) > 1e-6 * max(1.0, abs(mean), abs(c.ours)):
                c.missing.append(f"stale table: the metric JSONs give {mean:.6g}, the table {c.ours:.6g}")
            for r in support:
                prov, missing, _, notes = record_provenance(r, None)
                where = f"({method} seed {r['seed']}, {r.get('_path')})"
                prov["evaluator"] = _evaluator(r, met.key)
                if prov["evaluator"] is None:
                    missing.append("detectors")
                m = r["metrics"][task]
                prov["samples"] = None if m.get("n_images") is None else (
                    f"{m['n_images']} images" + (f" of {m['n_prompts']} prompts" if m.get("n_prompts") else ""))
                if prov["samples"] is None:
                    missing.append(f"metrics.{task}.n_images")
                c.provenance.append(prov)
                c.missing += [f"{x} {where}" for x in missing]
                c.notes += [x for x in notes if x not in c.notes]
                for s in r.get("substitutes") or []:
                    if str(s) not in c.substitute:
                        c.substitute.append(str(s))
            cells.append(c)
    return cells


# ----------------------------------------------------------------------------- figures

_GRID_RE = re.compile(r"(?P<dataset>[^/]+)/eval/(?P<method>[^/]+)/seed(?P<seed>\d+)/"
                      r"(?:step(?P<step>\d+)|(?P<final>final))_grid\.npz$")


def grid_files(paths) -> pd.DataFrame:
    """``dataset, method, seed, step (None for final), path`` of ``stepNNNNNNN_grid.npz`` / ``final_grid.npz``."""
    rows = []
    for p in paths:
        m = _GRID_RE.search(Path(p).as_posix())
        if m is None:
            log.warning("%s: not a grid path {dataset}/eval/{method}/seed{seed}/(stepNNNNNNN|final)_grid.npz", p)
            continue
        rows.append({"dataset": m["dataset"], "method": m["method"], "seed": int(m["seed"]),
                     "step": None if m["final"] else int(m["step"]), "path": str(p)})
    return pd.DataFrame(rows, columns=["dataset", "method", "seed", "step", "path"])


def checkpoint_steps(steps, total: int | None = None, fractions=FRACTIONS) -> list[int]:
    """The saved steps nearest to each fraction of ``total`` (default: the last saved step), each once."""
    steps = sorted(int(s) for s in steps)
    if not steps:
        return []
    total = steps[-1] if total is None else total
    out = []
    for f in fractions:
        s = min(steps, key=lambda x: (abs(x - f * total), x))
        if s not in out:
            out.append(s)
    return out


def upscale(img: np.ndarray, size: int = 64) -> np.ndarray:
    """An H x W x C uint8 image enlarged by nearest-neighbour repetition (integer factor, to about
    ``size`` pixels high; larger images unchanged), as RGB."""
    img = np.asarray(img)
    if img.ndim == 2:
        img = img[..., None]
    if img.shape[-1] == 1:
        img = np.repeat(img, 3, axis=-1)
    k = max(1, size // max(1, img.shape[0]))
    return np.repeat(np.repeat(img, k, axis=0), k, axis=1)


def tile_rows(rows: list[np.ndarray], size: int = 64, pad: int = 2) -> np.ndarray:
    """One image of ``len(rows)`` rows x max(columns) tiles (white padding; a short row stays white)."""
    tiles = [[upscale(im, size) for im in r] for r in rows]
    h, w = max(t.shape[0] for r in tiles for t in r), max(t.shape[1] for r in tiles for t in r)
    ncol = max(len(r) for r in tiles)
    canvas = np.full((len(tiles) * (h + pad) + pad, ncol * (w + pad) + pad, 3), 255, np.uint8)
    for i, r in enumerate(tiles):
        for j, t in enumerate(r):
            y, x = pad + i * (h + pad), pad + j * (w + pad)
            canvas[y:y + t.shape[0], x:x + t.shape[1]] = t
    return canvas


@dataclass
class Panel:
    title: str
    rows: list[tuple[str, np.ndarray]]   # (row label, N x H x W x C images)
    columns: list[str]


def _load(path, task: str) -> np.ndarray | None:
    arr = io.load_npz(path).get(f"task_{task}")
    if arr is None:
        log.warning("%s: no array task_%s", path, task)
        return None
    arr = np.asarray(arr)
    if arr.dtype != np.uint8:
        arr = np.clip(np.rint(arr.astype(np.float64)), 0, 255).astype(np.uint8)
    return arr if arr.ndim == 4 else arr[..., None]


class FigureData:
    """Grids and metric JSONs of one text dataset."""

    def __init__(self, view: DatasetView, grids: pd.DataFrame, records: list[dict]):
        self.view, self.grids = view, grids[grids["dataset"] == view.dataset]
        self.records = [r for r in records if str(r.get("dataset")) == view.dataset]

    def seed(self, method: str) -> int | None:
        g = self.grids[self.grids["method"] == method]
        return None if g.empty else int(g["seed"].min())

    def per_step(self, method: str, seed: int) -> float | None:
        """Images per step from the run's metric JSONs (images_seen / step), else from the config."""
        for r in self.records:
            if (str(r["method"]) == method and r["seed"] == seed and isinstance(r.get("step"), (int, float))
                    and r["step"] > 0 and isinstance(r.get("images_seen"), (int, float))):
                return r["images_seen"] / r["step"]
        return self.view.images_per_step()

    def images_seen(self, method: str, seed: int, step: int) -> float | None:
        for r in self.records:
            if (str(r["method"]) == method and r["seed"] == seed and r.get("step") == step
                    and isinstance(r.get("images_seen"), (int, float))):
                return float(r["images_seen"])
        k = self.per_step(method, seed)
        return None if k is None else step * k

    def total_steps(self, method: str, seed: int, saved: list[int]) -> int:
        if (s := self.view.steps(method)) is not None:
            return s
        fin = [r["step"] for r in self.records if str(r["method"]) == method and r["seed"] == seed
               and r.get("final") and isinstance(r.get("step"), (int, float))]
        return int(fin[0]) if fin else max(saved)

    def _step_label(self, method: str, seed: int, step: int) -> str:
        n = self.images_seen(method, seed, step)
        return f"{n:,.0f} images\n(step {step})" if n is not None else f"step {step}"

    def checkpoint_rows(self, method: str, task: str) -> list[tuple[str, np.ndarray]]:
        seed = self.seed(method)
        if seed is None:
            return []
        g = self.grids[(self.grids["method"] == method) & (self.grids["seed"] == seed) & self.grids["step"].notna()]
        by_step = {int(r.step): r.path for r in g.itertuples()}
        rows = []
        for s in checkpoint_steps(by_step, self.total_steps(method, seed, list(by_step))):
            arr = _load(by_step[s], task)
            if arr is not None:
                rows.append((self._step_label(method, seed, s), arr))
        return rows

    def final_row(self, method: str, task: str) -> tuple[str, np.ndarray] | None:
        """The final grid (``final_grid.npz``, else the last checkpoint's) of a method's lowest seed."""
        seed = self.seed(method)
        if seed is None:
            return None
        g = self.grids[(self.grids["method"] == method) & (self.grids["seed"] == seed)]
        fin = g[g["step"].isna()]
        if method in ("teacher", "sld"):
            if fin.empty:
                return None
            arr = _load(fin["path"].iloc[0], task)
            return None if arr is None else ({"teacher": "SD v1.4 analogue\n(teacher)", "sld": SLD_LABEL}[method], arr)
        kind = self.view.kind(method)[0]
        steps = g[g["step"].notna()]
        if not fin.empty:
            path, step = fin["path"].iloc[0], self.total_steps(method, seed, [int(s) for s in steps["step"]] or [0])
        elif not steps.empty:
            last = steps.loc[steps["step"].astype(int).idxmax()]
            path, step = last["path"], int(last["step"])
        else:
            return None
        arr = _load(path, task)
        if arr is None:
            return None
        n = self.images_seen(method, seed, step)
        return (f"{'PECKER' if kind == 'pecker' else 'SFD'} ({method})\n"
                + (f"{n:,.0f} images" if n is not None else f"step {step}")), arr

    def prompts(self, task: str, n: int) -> list[str]:
        """The column labels: the grid's prompts and seeds as the evaluation draws them (the first
        ``grid_columns`` forget prompts at seed 0, or the first I2P-style rows at their seeds), else
        'prompt i'."""
        t = self.view.tasks.get(task) or {}
        try:
            from pecker.text.prompts import read_i2p, read_prompt_csv

            if t.get("type") == "celebrity" and t.get("prompts"):
                out = [column_label(p, 0) for p in read_prompt_csv(t["prompts"])[:n]]
            elif t.get("type") == "nudity" and self.view.evaluate.get("i2p_prompts"):
                df = read_i2p(self.view.evaluate["i2p_prompts"], self.view.evaluate.get("i2p_category", "sexual"))
                out = [column_label(p, int(s)) for p, s in zip(df["prompt"][:n], df["sd_seed"][:n])]
            else:
                out = []
        except Exception as err:  # noqa: BLE001 (a label, not a result: say so and go on)
            log.warning("task %s: prompts for the column labels unavailable (%s)", task, err)
            out = []
        return out + [f"prompt {i + 1}" for i in range(len(out), n)]


def column_label(prompt: str, seed=None, width: int = 15, lines: int = 4) -> str:
    """A prompt wrapped to at most ``lines`` lines (an ellipsis where cut), its seed on the last line."""
    parts = textwrap.wrap(str(prompt), width) or [str(prompt)]
    if len(parts) > lines:
        parts = parts[:lines]
        parts[-1] = parts[-1][: width - 1] + "…"
    return "\n".join(parts + ([f"seed {seed}"] if seed is not None else []))


def draw_panels(panels: list[Panel], title: str, prefix: Path, size: int = 64) -> list[Path]:
    """The panels stacked vertically, each one image of rows x columns tiles (rows labelled on the left,
    prompts above the columns); PNG and PDF, atomically. Laid out in inches, so that a tile has the same
    size in every panel and figure."""
    import matplotlib.pyplot as plt

    from pecker.report.figures import placeholder, save_figure

    drawn = [p for p in panels if p.rows]
    if not drawn:
        msg = "No sample grids for: " + ("; ".join(p.title for p in panels) or "any task of this type")
        return placeholder(prefix, title, msg)
    tile, head, gap, top, left = 0.8, 1.05, 0.25, 0.3, 1.5  # inches
    ncols = [max(len(a) for _, a in p.rows) for p in drawn]
    width = left + tile * max(ncols) + 0.2
    height = top + sum(head + tile * len(p.rows) + gap for p in drawn)
    fig = plt.figure(figsize=(width, height))
    y = height - top
    for p, ncol in zip(drawn, ncols):
        y -= head + tile * len(p.rows)
        ax = fig.add_axes((left / width, y / height, tile * ncol / width, tile * len(p.rows) / height))
        y -= gap
        canvas = tile_rows([a for _, a in p.rows], size)
        ax.imshow(canvas, interpolation="nearest")
        step_y, step_x = (canvas.shape[0] - 2) / len(p.rows), (canvas.shape[1] - 2) / ncol
        ax.set_yticks([1 + step_y * (r + 0.5) for r in range(len(p.rows))])
        ax.set_yticklabels([lab for lab, _ in p.rows], fontsize=7)
        ax.xaxis.tick_top()
        ax.set_xticks([1 + step_x * (c + 0.5) for c in range(ncol)])
        ax.set_xticklabels(list(p.columns[:ncol]) + [""] * (ncol - len(p.columns)), fontsize=6)
        ax.tick_params(length=0)
        for spine in ax.spines.values():
            spine.set_visible(False)
        ax.set_title(p.title, fontsize=8, loc="left")
    fig.suptitle(title, fontsize=9, x=0.02, y=1 - 0.15 / height, ha="left", va="top")
    return save_figure(fig, prefix)


def _run_title(data: FigureData, method: str, task: str) -> str:
    kind, two = data.view.kind(method)
    name = "PECKER" if kind == "pecker" else ("SFD-Two-Stage" if two else "SFD")
    return f"{name} ({method}, seed {data.seed(method)}) on {data.view.label(task)}"


def budget_panels(data: FigureData, ttype: str) -> list[Panel]:
    """Figs 4 and 6: per task of ``ttype``, each PECKER then SFD run across its checkpoints."""
    panels = []
    for task in data.view.tasks_of(ttype):
        methods = data.view.runs(task) or sorted(
            {m for m in data.grids["method"] if m not in ("teacher", "sld")})
        for m in methods:
            rows = data.checkpoint_rows(m, task)
            ncol = max((len(a) for _, a in rows), default=0)
            panels.append(Panel(_run_title(data, m, task), rows, data.prompts(task, ncol)))
    return panels


def model_panels(data: FigureData) -> list[Panel]:
    """Fig. 5: per nudity task, the teacher, SLD-Medium, SFD and PECKER on the final grids."""
    panels = []
    for task in data.view.tasks_of("nudity"):
        rows = [r for m in ("teacher", "sld", *data.view.runs(task, pecker_first=False))
                if (r := data.final_row(m, task)) is not None]
        ncol = max((len(a) for _, a in rows), default=0)
        panels.append(Panel(f"{data.view.label(task)}: the same prompts and seeds for every model", rows,
                            data.prompts(task, ncol)))
    return panels


def write_concept_figures(cfg_ds: dict, dataset: str, grid_paths, out_dir: str | Path,
                          records: list[dict] | None = None) -> dict[str, list[Path]]:
    """``fig4_{dataset}``, ``fig5_{dataset}`` and ``fig6_{dataset}`` (.png and .pdf) in ``out_dir``; a figure
    without grids is still written, saying so. ``records``: the dataset's metric JSONs (they give the
    images seen of each checkpoint)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    recs = list(records or [])
    view = DatasetView(dataset, cfg_ds, concept_records(recs))
    data = FigureData(view, grid_files(grid_paths), recs)
    out_dir = Path(out_dir)
    with plt.rc_context({"font.size": 8}):
        return {
            "fig4": draw_panels(budget_panels(data, "celebrity"),
                                f"Fig. 4 ({dataset}): celebrity-style concept forgetting across the image budget "
                                "(same prompt and seed per column)", out_dir / f"fig4_{dataset}"),
            "fig5": draw_panels(model_panels(data),
                                f"Fig. 5 ({dataset}): models on the same nudity-style prompts",
                                out_dir / f"fig5_{dataset}"),
            "fig6": draw_panels(budget_panels(data, "nudity"),
                                f"Fig. 6 ({dataset}): nudity-style forgetting across the image budget, PECKER and SFD",
                                out_dir / f"fig6_{dataset}"),
        }
