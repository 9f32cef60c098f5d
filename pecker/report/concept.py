"""Tables 2-3 and Figs 4-6 (concept forgetting) from the concept metric JSONs of text datasets, and
their audit cells (docs/method.md section 6).

Rows: the teacher ("SD v1.4" analogue: the multi-step teacher through diffusers' pipeline), SLD-Medium,
then every SFD-loop method of the table's task type, named "SFD" (no mask) or "PECKER" (mask) with its
images seen. Table 2 has one row per (model, celebrity task), Table 3 per (model, nudity task). Cells
are percentages: the mean over seeds with a Student-t interval when there are two or more.

Paper rows matched: teacher <-> SD v1.4, sld <-> SLD-Medium, SFD <-> SFD-Two-Stage (ours is one-stage
unless the method has ``init_from``), PECKER <-> PECKER; the i-th celebrity task <-> the paper's i-th
celebrity (Brad Pitt, Angelina Jolie).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from pecker import io
from pecker.report import stats
from pecker.report.tables import DASH, latex_escape, markdown_table

TABLE_METRICS = {
    "table2": ("celebrity", (("share_without_object", "share w/o object (faces)"), ("gcd_analogue", "GCD analogue"))),
    "table3": ("nudity", (("inappropriate_probability", "inappropriate probability"),
                          ("max_expected_inappropriateness", "max expected inappropriateness"))),
}
PAPER_METRIC = {"share_without_object": "share_without_faces", "gcd_analogue": "gcd",
                "inappropriate_probability": "inappropriate_probability",
                "max_expected_inappropriateness": "max_expected_inappropriateness"}
PAPER_CELEBRITIES = ("brad_pitt", "angelina_jolie")
TITLES = {"table2": "Table 2: celebrity forgetting (analogue; lower is better)",
          "table3": "Table 3: nudity forgetting, I2P-style 'sexual' prompts (analogue; lower is better)"}


def concept_records(records: list[dict]) -> list[dict]:
    """The final evaluations of text datasets (they carry ``tasks``)."""
    return [r for r in records if r.get("final") and r.get("tasks")]


def _kind(cfg_ds: dict | None, method: str) -> tuple[str, bool]:
    """``(row kind, two_stage)``: teacher / sld / sfd / pecker."""
    if method in ("teacher", "sld"):
        return method, False
    m = (((cfg_ds or {}).get("unlearn") or {}).get("methods") or {}).get(method) or {}
    return ("pecker" if (m.get("mask") or {}).get("enabled") else "sfd"), bool(m.get("init_from"))


def _model_label(kind: str, images_seen) -> str:
    if kind == "teacher":
        return "SD v1.4 analogue (teacher, multi-step)"
    if kind == "sld":
        return "SLD-Medium"
    name = "PECKER" if kind == "pecker" else "SFD"
    if images_seen is None or (isinstance(images_seen, float) and math.isnan(images_seen)):
        return name
    n = int(images_seen)
    return f"{name} ({n / 1000:g}k images)" if n >= 10_000 else f"{name} ({n:,} images)"


def build_table(name: str, records: list[dict], cfgs: dict[str, dict], level: float = 0.95) -> pd.DataFrame:
    """One concept table (``table2`` or ``table3``) as numbers (fractions in [0, 1])."""
    ttype, metrics = TABLE_METRICS[name]
    rows = []
    for ds in sorted({str(r["dataset"]) for r in records}):
        cfg_ds = cfgs.get(ds) or {}
        tasks = (cfg_ds.get("unlearn") or {}).get("tasks") or {}
        recs = [r for r in records if str(r["dataset"]) == ds]
        for tname, task in tasks.items():
            if task["type"] != ttype:
                continue
            order = {"teacher": 0, "sld": 1, "sfd": 2, "pecker": 3}
            methods = sorted({str(r["method"]) for r in recs if tname in (r.get("metrics") or {})},
                             key=lambda m: (order[_kind(cfg_ds, m)[0]], m))
            for m in methods:
                mr = [r for r in recs if str(r["method"]) == m and tname in r["metrics"]]
                kind, two_stage = _kind(cfg_ds, m)
                seen = mr[0].get("images_seen") if kind in ("sfd", "pecker") else None
                row = {"dataset": ds, "method": m, "model": _model_label(kind, seen), "kind": kind,
                       "two_stage": two_stage, "task": tname, "task_label": task.get("label") or tname,
                       "images_seen": seen, "n_seeds": len(mr)}
                for key, _ in metrics:
                    iv = stats.t_interval([r["metrics"][tname].get(key) for r in mr], level)
                    row.update({f"{key}_mean": iv["mean"], f"{key}_lo": iv["lo"], f"{key}_hi": iv["hi"],
                                f"{key}_n": iv["n"]})
                rows.append(row)
    cols = ["dataset", "method", "model", "kind", "two_stage", "task", "task_label", "images_seen", "n_seeds"]
    cols += [f"{k}_{s}" for k, _ in metrics for s in ("mean", "lo", "hi", "n")]
    return pd.DataFrame(rows, columns=cols)


def _pct(mean, lo, hi, n) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return DASH
    text = f"{100 * mean:.2f}%"
    if n and n > 1 and not math.isnan(lo):
        text += f" [{100 * lo:.2f}, {100 * hi:.2f}]"
    elif n == 1:
        text += " (1 seed)"
    return text


def display(table: pd.DataFrame, name: str) -> pd.DataFrame:
    _, metrics = TABLE_METRICS[name]
    out = pd.DataFrame({"Model": table["model"].astype(str), "Concept": table["task_label"].astype(str)})
    for key, label in metrics:
        out[f"{label} ↓"] = [_pct(r[f"{key}_mean"], r[f"{key}_lo"], r[f"{key}_hi"], r[f"{key}_n"])
                             for _, r in table.iterrows()]
    return out.reset_index(drop=True)


def write_concept_tables(records: list[dict], cfgs: dict[str, dict], out_dir: str | Path) -> dict[str, Path]:
    """``table2.{csv,md,tex}`` and ``table3.{csv,md,tex}`` in ``out_dir``."""
    recs = concept_records(records)
    subs = sorted({str(s) for r in recs for s in r.get("substitutes") or []})
    out_dir = Path(out_dir)
    written = {}
    for name in ("table2", "table3"):
        table = build_table(name, recs, cfgs)
        paths = {ext: out_dir / f"{name}.{ext}" for ext in ("csv", "md", "tex")}
        with io.atomic_path(paths["csv"]) as tmp:
            table.to_csv(tmp, index=False, float_format="%.10g")
        md = [f"# {TITLES[name]}", ""]
        tex = [f"% {TITLES[name]}", "% written by `pecker report concept-tables`; needs \\usepackage{booktabs}", ""]
        if subs:
            md += ["Substitutes for the paper's assets (recorded in every result):", ""]
            md += [f"- {s}" for s in subs] + [""]
        if table.empty:
            md += ["No results.", ""]
        for ds in table["dataset"].unique():
            sub = table[table["dataset"] == ds]
            frame = display(sub, name)
            md += [f"## {ds}", "", markdown_table(frame), ""]
            body = frame.map(latex_escape)
            tex += [body.to_latex(index=False, escape=False, caption=latex_escape(f"{TITLES[name]}: {ds}"),
                                  label=f"tab:{name}-{ds}", position="htbp"), ""]
        md += ["Percent of images; mean over seeds [95% " + stats.METHOD_T + "] or '(1 seed)'. SFD and PECKER: the "
               "final EMA generator; images seen count the retain batch (as the official SFD code does).", ""]
        io.atomic_write_text(paths["md"], "\n".join(md))
        io.atomic_write_text(paths["tex"], "\n".join(tex))
        written.update({f"{name}.{k}": v for k, v in paths.items()})
    return written


# ----------------------------------------------------------------------------- audit


def paper_row(paper, name: str, kind: str) -> tuple[dict | None, str | None]:
    model = {"teacher": "SD v1.4", "sld": "SLD-Medium", "sfd": "SFD-Two-Stage", "pecker": "PECKER"}.get(kind)
    for row in paper.data["tables"][name]["rows"]:
        if row["model"] == model:
            return row, model
    return None, model


def audit_cells(name: str, table: pd.DataFrame, records: list[dict], paper) -> list:
    """The audit cells of a concept table (the Cell of :mod:`pecker.report.audit`)."""
    from pecker.report.audit import Cell, record_provenance

    _, metrics = TABLE_METRICS[name]
    recs = concept_records(records)
    cells = []
    for _, row in table.iterrows():
        ds, method, task = str(row["dataset"]), str(row["method"]), str(row["task"])
        prow, pmodel = paper_row(paper, name, str(row["kind"]))
        ctasks = [t for t in table[table["dataset"] == ds]["task"].drop_duplicates()]
        for key, label in metrics:
            mean = row[f"{key}_mean"]
            ours = None if pd.isna(mean) else 100 * float(mean)
            c = Cell(name, ds, f"{method} / {task}", label, key, ours, None, int(row[f"{key}_n"] or 0),
                     comparison=f"paper {name} / {pmodel}" if prow else "no paper counterpart")
            pval = None
            if prow is not None:
                if name == "table2":
                    i = ctasks.index(task)
                    celeb = PAPER_CELEBRITIES[i] if i < len(PAPER_CELEBRITIES) else None
                    pval = (prow.get(celeb) or {}).get(PAPER_METRIC[key]) if celeb else None
                    c.comparison += f" ({celeb or 'no paper celebrity'})"
                else:
                    pval = prow.get(PAPER_METRIC[key])
                for a in paper.anomalies(name):
                    if any(x.get("model") == pmodel and x.get("metric") == PAPER_METRIC[key] for x in a.get("cells", [])):
                        c.notes.append(f"{a['id']}: {' '.join(str(a['note']).split())}")
            c.paper = pval
            if ours is not None and pval is not None:
                c.diff = ours - float(pval)
            if row["kind"] == "sfd" and not row["two_stage"]:
                c.notes.append("ours is one-stage SFD; the paper's row is SFD-Two-Stage (from SiD-LSG)")
            support = [r for r in recs if str(r["dataset"]) == ds and str(r["method"]) == method
                       and (r.get("metrics") or {}).get(task, {}).get(key) is not None]
            if ours is None:
                c.notes.append("not computed")
            elif not support:
                c.missing.append("no metric JSON supports this value")
            else:
                vals = [100 * float(r["metrics"][task][key]) for r in support]
                if abs(sum(vals) / len(vals) - ours) > 1e-6 * max(1.0, abs(ours)):
                    c.missing.append(f"stale table: the metric JSONs give {sum(vals) / len(vals):.6g}, the table {ours:.6g}")
            for r in support:
                prov, missing, _, notes = record_provenance(r, None)
                prov["evaluator"] = "; ".join(str(v) for k, v in (r.get("detectors") or {}).items() if k != "nudenet")
                if key in ("inappropriate_probability", "max_expected_inappropriateness"):
                    nn = (r.get("detectors") or {}).get("nudenet")
                    prov["evaluator"] += f"; NudeNet: {nn.get('nudenet') if isinstance(nn, dict) else nn}"
                prov["samples"] = f"{r['metrics'][task].get('n_images')} images"
                c.provenance.append(prov)
                c.missing += [f"{m} ({method} seed {r['seed']}, {r.get('_path')})" for m in missing]
                c.notes += [n for n in notes if n not in c.notes]
                for s in r.get("substitutes") or []:
                    if str(s) not in c.substitute:
                        c.substitute.append(str(s))
            cells.append(c)
    return cells


# ----------------------------------------------------------------------------- figures


def _grid_files(paths) -> pd.DataFrame:
    """``(method, seed, step, path)`` of grid files (``stepNNNNNNN_grid.npz``, ``final_grid.npz``)."""
    import re

    rows = []
    for p in paths:
        p = Path(p)
        m = re.search(r"eval/(?P<method>[^/]+)/seed(?P<seed>\d+)/(step(?P<step>\d{7})|final)_grid\.npz$", p.as_posix())
        if m:
            rows.append({"method": m["method"], "seed": int(m["seed"]),
                         "step": int(m["step"]) if m["step"] else None, "path": p})
    return pd.DataFrame(rows, columns=["method", "seed", "step", "path"])


def _near_fractions(steps: list[int], fractions=(0, 0.2, 0.4, 0.6, 0.8, 1.0)) -> list[int]:
    total = max(steps)
    out = []
    for f in fractions:
        s = min(steps, key=lambda x: abs(x - f * total))
        if s not in out:
            out.append(s)
    return out


def _panel(ax, images: np.ndarray, title: str) -> None:
    from PIL import Image

    tiles = [np.asarray(Image.fromarray(im.squeeze() if im.shape[-1] == 1 else im).resize((64, 64), Image.NEAREST))
             for im in images]
    strip = np.concatenate([t if t.ndim == 3 else np.repeat(t[..., None], 3, -1) for t in tiles], axis=1)
    ax.imshow(strip)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_ylabel(title, rotation=0, ha="right", va="center", fontsize=8)


def _save(fig, out_png: Path) -> list[Path]:
    out = []
    for path in (out_png, out_png.with_suffix(".pdf")):
        with io.atomic_path(path, suffix=path.suffix) as tmp:
            fig.savefig(tmp, format=path.suffix[1:], bbox_inches="tight", dpi=120)
        out.append(path)
    return out


def _checkpoint_rows(grids: pd.DataFrame, method: str, task: str, images_per_step: int):
    g = grids[(grids["method"] == method) & grids["step"].notna()]
    if g.empty:
        return []
    seed = int(g["seed"].min())
    g = g[g["seed"] == seed]
    steps = sorted(int(s) for s in g["step"])
    rows = []
    for s in _near_fractions(steps):
        arr = io.load_npz(g[g["step"] == s]["path"].iloc[0]).get(f"task_{task}")
        if arr is not None:
            rows.append((f"{method}\n{s * images_per_step:,} images", arr))
    return rows


def write_concept_figures(cfg_ds: dict, dataset: str, grid_paths, out_dir: str | Path) -> dict[str, list[Path]]:
    """``fig4_{dataset}`` (celebrity across the image budget, PECKER and SFD), ``fig5_{dataset}`` (the
    models on the same nudity prompts) and ``fig6_{dataset}`` (nudity across the budget, PECKER against
    SFD), each .png and .pdf; a panel with no grid says so."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grids = _grid_files(grid_paths)
    unl = cfg_ds.get("unlearn") or {}
    tasks, methods = unl.get("tasks") or {}, unl.get("methods") or {}
    per_step = unl.get("batch_size", 8) if unl.get("images_seen") == "retain" else \
        unl.get("batch_size", 8) + (unl.get("forget_batch_size") or unl.get("batch_size", 8))

    def of_type(t):
        return [n for n, x in tasks.items() if x["type"] == t]

    def runs(task):
        ms = [m for m, x in methods.items() if (x or {}).get("task") == task]
        return sorted(ms, key=lambda m: (bool(((methods[m] or {}).get("mask") or {}).get("enabled")), m), reverse=True)

    out_dir = Path(out_dir)
    written = {}
    for fig_name, ttype, what in (("fig4", "celebrity", "budget"), ("fig6", "nudity", "budget"), ("fig5", "nudity", "models")):
        rows = []
        for task in of_type(ttype)[:1]:
            if what == "budget":
                for m in runs(task):
                    rows += _checkpoint_rows(grids, m, task, per_step)
            else:
                for m in ("teacher", "sld"):
                    g = grids[(grids["method"] == m) & grids["step"].isna()]
                    if not g.empty and f"task_{task}" in io.load_npz(g["path"].iloc[0]):
                        rows.append(({"teacher": "teacher (SD v1.4 analogue)", "sld": "SLD-Medium"}[m],
                                     io.load_npz(g["path"].iloc[0])[f"task_{task}"]))
                for m in runs(task):
                    ck = _checkpoint_rows(grids, m, task, per_step)
                    if ck:
                        rows.append((ck[-1][0].replace("\n", " "), ck[-1][1]))
        fig, axes = plt.subplots(max(len(rows), 1), 1, figsize=(8, 1.1 * max(len(rows), 1) + 0.6), squeeze=False)
        if not rows:
            axes[0, 0].text(0.5, 0.5, "no grids", ha="center", va="center")
            axes[0, 0].axis("off")
        for ax, (label, imgs) in zip(axes[:, 0], rows):
            _panel(ax, imgs, label)
        title = {"fig4": "Fig. 4 analogue: celebrity-style concept across the image budget (same prompt and seed per column)",
                 "fig5": "Fig. 5 analogue: models on the same nudity-style prompts (same seed per column)",
                 "fig6": "Fig. 6 analogue: nudity-style attribute across the image budget, PECKER and SFD"}[fig_name]
        fig.suptitle(f"{title}\n{dataset}", fontsize=9)
        written[fig_name] = _save(fig, out_dir / f"{fig_name}_{dataset}.png")
        plt.close(fig)
    return written
