"""Does PECKER forget faster than SFD? Time-to-forget per run, its interval over seeds, the ratio to
the reference method, the per-iteration cost, and a verdict generated from those numbers.

**Time-to-forget** of one run at threshold ``u`` (docs/method.md section 6): the first checkpoint at
which UA >= ``u`` *and* retained-class accuracy >= the teacher's minus ``retained_tolerance``,
linearly interpolated between that checkpoint and the previous one (on UA where UA crossed ``u``, on
retained accuracy where that crossed its floor, the later of the two where both did), in steps,
images seen and training wall-clock. Reached at the first checkpoint: that checkpoint's values
(step 0: zero). Never reached: ``reached = False`` and NaN times. A curve that reaches the
threshold and drops again counts its first crossing.

**Ratio** of a method to the reference (``report.reference_method``, default ``sfd``):
:func:`pecker.report.stats.ratio_interval` over the seeds of both, computed only when every seed of
both methods reached the threshold (otherwise the row says how many did).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from pecker import io
from pecker.report import stats
from pecker.report.results import TEACHER, curves, order_methods

AXES = ("steps", "images_seen", "wall_clock_s")
AXIS_COLUMN = {"steps": "step", "images_seen": "images_seen", "wall_clock_s": "wall_clock_s"}
AXIS_LABEL = {"steps": "steps", "images_seen": "images seen", "wall_clock_s": "training wall-clock"}


def _crossing(prev: float, cur: float, target: float) -> float:
    """Fraction in [0, 1] of the way from ``prev`` to ``cur`` at which a rising quantity reaches ``target``."""
    if prev >= target:
        return 0.0
    if cur == prev:
        return 1.0
    return float(min(1.0, max(0.0, (target - prev) / (cur - prev))))


def time_to_forget(curve: pd.DataFrame, threshold: float, retained_floor: float) -> dict:
    """Time-to-forget of one run (rows: one per checkpoint, columns ``step``, ``images_seen``,
    ``wall_clock_s``, ``ua``, ``retained_accuracy``); see the module docstring."""
    c = curve.sort_values("step").reset_index(drop=True)
    ok = (c["ua"] >= threshold) & (c["retained_accuracy"] >= retained_floor)
    out = {"reached": False, **{a: math.nan for a in AXES}}
    if not ok.any():
        return out
    k = int(np.flatnonzero(ok.to_numpy())[0])
    if k == 0:
        return {"reached": True, **{a: float(c.loc[0, AXIS_COLUMN[a]]) for a in AXES}}
    p, q = c.loc[k - 1], c.loc[k]
    f = max(_crossing(p["ua"], q["ua"], threshold), _crossing(p["retained_accuracy"], q["retained_accuracy"],
                                                             retained_floor))
    out["reached"] = True
    for a in AXES:
        col = AXIS_COLUMN[a]
        out[a] = float(p[col] + f * (q[col] - p[col]))
    return out


def teacher_retained(df: pd.DataFrame, dataset: str) -> float:
    t = df[(df["dataset"] == dataset) & (df["method"] == TEACHER) & df["final"]]["retained_accuracy"].dropna()
    return float(t.mean()) if len(t) else math.nan


def run_times(df: pd.DataFrame, thresholds, tolerance: float) -> pd.DataFrame:
    """One row per (dataset, method, seed, threshold): time-to-forget on every axis."""
    cur = curves(df[df["method"] != TEACHER])
    rows = []
    for (ds, method, seed), g in cur.groupby(["dataset", "method", "seed"]):
        racc = teacher_retained(df, ds)
        floor = racc - tolerance if math.isfinite(racc) else -math.inf
        g = g.assign(step=g["step"].astype(float))
        for u in thresholds:
            rows.append({"dataset": ds, "method": method, "seed": int(seed), "threshold": float(u),
                         "retained_floor": floor, **time_to_forget(g, float(u), floor)})
    return pd.DataFrame(rows, columns=["dataset", "method", "seed", "threshold", "retained_floor", "reached", *AXES])


def _cost(df: pd.DataFrame) -> pd.DataFrame:
    """Seconds per iteration of every finished run (final JSON: training wall-clock / steps)."""
    fin = df[df["final"] & (df["method"] != TEACHER)].copy()
    fin["sec_per_iter"] = fin["wall_clock_s"] / fin["train_steps"]
    return fin


def _put(row: dict, prefix: str, iv: dict, key: str = "mean") -> None:
    row[f"{prefix}_mean"], row[f"{prefix}_lo"], row[f"{prefix}_hi"] = iv.get(key, math.nan), iv["lo"], iv["hi"]


def build_efficiency(df: pd.DataFrame, thresholds=(90.0, 95.0), tolerance: float = 0.05, reference: str = "sfd",
                     level: float = 0.95, references: dict | None = None) -> pd.DataFrame:
    """One row per (dataset, method, threshold): time-to-forget and its ratio to the method's
    reference (``references[method]``, else ``reference``), the per-iteration cost and its ratio,
    final UA and FID, each with its interval over seeds."""
    references = references or {}
    times = run_times(df, thresholds, tolerance)
    cost = _cost(df)
    rows = []
    for ds in sorted(times["dataset"].unique()):
        methods = order_methods(times[times["dataset"] == ds]["method"])
        for u in thresholds:
            tt = times[(times["dataset"] == ds) & (times["threshold"] == float(u))]
            for method in methods:
                ref_name = references.get(method, reference)
                ref = tt[tt["method"] == ref_name]
                mine = tt[tt["method"] == method]
                reached = mine[mine["reached"]]
                row = {"dataset": ds, "method": method, "threshold": float(u), "reference": ref_name,
                       "retained_floor": float(mine["retained_floor"].iloc[0]), "n_seeds": int(len(mine)),
                       "n_reached": int(len(reached))}
                for a in AXES:
                    _put(row, f"ttf_{a}", stats.t_interval(reached[a], level))
                all_reached = len(reached) == len(mine) and len(ref) and bool(ref["reached"].all())
                for a in ("images_seen", "wall_clock_s"):
                    r = stats.ratio_interval(mine[a], ref[a], level) if all_reached else \
                        {"ratio": math.nan, "lo": math.nan, "hi": math.nan}
                    _put(row, f"ratio_{a}", r, "ratio")
                c = cost[(cost["dataset"] == ds) & (cost["method"] == method)]
                cref = cost[(cost["dataset"] == ds) & (cost["method"] == ref_name)]
                _put(row, "sec_per_iter", stats.t_interval(c["sec_per_iter"], level))
                _put(row, "cost_ratio", stats.ratio_interval(c["sec_per_iter"], cref["sec_per_iter"], level), "ratio")
                for m in ("ua", "fid"):
                    _put(row, f"final_{m}", stats.t_interval(c[m], level))
                rows.append(row)
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------- verdict


def _fmt_ratio(mean, lo, hi) -> str:
    if not math.isfinite(mean):
        return "–"
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return f"{mean:.2f} (no interval)"
    return f"{mean:.2f} [{lo:.2f}, {hi:.2f}]"


def verdicts(table: pd.DataFrame, tolerance: float, level: float = 0.95) -> list[dict]:
    """One generated statement per (dataset, threshold, method other than the reference)."""
    out = []
    pct = f"{round(level * 100)}%"
    for r in table.itertuples():
        if r.method == r.reference or r.method in set(table["reference"]):
            continue  # a reference is not compared with another reference
        ref = table[(table["dataset"] == r.dataset) & (table["threshold"] == r.threshold)
                    & (table["method"] == r.reference)]
        n_ref, k_ref = (int(ref["n_seeds"].iloc[0]), int(ref["n_reached"].iloc[0])) if len(ref) else (0, 0)
        cond = (f"UA >= {r.threshold:g} with retained-class accuracy at least the teacher's minus {tolerance:g}")
        head = f"{r.dataset}, {cond}: {r.method} / {r.reference} time-to-forget"
        rec = {"dataset": r.dataset, "threshold": r.threshold, "method": r.method, "reference": r.reference,
               "n_seeds": r.n_seeds, "n_reached": r.n_reached, "reference_n_seeds": n_ref,
               "reference_n_reached": k_ref}
        if not n_ref:
            rec.update(outcome="no reference", text=f"{head}: no {r.reference} runs to compare with.")
        elif r.n_reached < r.n_seeds or k_ref < n_ref:
            if r.n_reached == r.n_seeds and k_ref < n_ref:
                outcome = "faster (reference did not always reach the threshold)"
            elif r.n_reached < r.n_seeds and k_ref == n_ref:
                outcome = "slower (did not always reach the threshold)"
            else:
                outcome = "undetermined"
            rec.update(outcome=outcome, text=(
                f"{head}: not computed, {r.method} reached the threshold in {r.n_reached} of {r.n_seeds} seeds "
                f"and {r.reference} in {k_ref} of {n_ref} within the configured steps; outcome: {outcome}."))
        else:
            parts, outcomes = [], {}
            for a in ("images_seen", "wall_clock_s"):
                iv = {"ratio": getattr(r, f"ratio_{a}_mean"), "lo": getattr(r, f"ratio_{a}_lo"),
                      "hi": getattr(r, f"ratio_{a}_hi")}
                ex = stats.excludes_one(iv)
                if not math.isfinite(iv["ratio"]):
                    outcomes[a] = "undetermined (a time-to-forget of zero: reached at the first checkpoint)"
                elif ex is None:
                    outcomes[a] = "undetermined (one seed: no interval)"
                else:
                    outcomes[a] = ("faster" if iv["ratio"] < 1 else "slower") if ex else "no difference shown"
                parts.append(f"{_fmt_ratio(iv['ratio'], iv['lo'], iv['hi'])} in {AXIS_LABEL[a]}")
                rec[f"ratio_{a}"] = iv
            rec.update(outcome=outcomes["images_seen"], outcome_wall_clock=outcomes["wall_clock_s"])
            word = {"faster": f"{r.method} forgets faster than {r.reference}",
                    "slower": f"{r.method} forgets slower than {r.reference}",
                    "no difference shown": f"the {pct} interval includes 1: no difference between {r.method} "
                                           f"and {r.reference} is shown at this scale"}
            wall, img = outcomes["wall_clock_s"], outcomes["images_seen"]
            tail = word.get(img, img) + (" in images seen and in wall-clock" if wall == img else " in images seen")
            tail += "" if wall == img else f"; in wall-clock: {word.get(wall, wall)}"
            rec["text"] = (f"{head} = {'; '.join(parts)} ({stats.METHOD_RATIO}, {pct}, {r.n_seeds} + {n_ref} "
                           f"seeds): {tail}.")
        out.append(rec)
    return out


# ----------------------------------------------------------------------------- writing


def _cell(mean, lo, hi, fmt: str) -> str:
    if mean is None or not math.isfinite(mean):
        return "–"
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return f"{format(mean, fmt)} (1 seed)"
    return f"{format(mean, fmt)} [{format(lo, fmt)}, {format(hi, fmt)}]"


def display(table: pd.DataFrame) -> pd.DataFrame:
    t = table
    g = lambda p, f: [_cell(a, b, c, f) for a, b, c in zip(t[f"{p}_mean"], t[f"{p}_lo"], t[f"{p}_hi"])]  # noqa: E731
    return pd.DataFrame({
        "Method": t["method"], "UA ≥": [f"{u:g}" for u in t["threshold"]],
        "Reached": [f"{k}/{n}" for k, n in zip(t["n_reached"], t["n_seeds"])],
        "Steps to forget": g("ttf_steps", ",.0f"), "Images to forget": g("ttf_images_seen", ",.0f"),
        "Wall-clock to forget (s)": g("ttf_wall_clock_s", ",.0f"),
        "Ratio (images)": g("ratio_images_seen", ".2f"), "Ratio (wall-clock)": g("ratio_wall_clock_s", ".2f"),
        "s / iteration": g("sec_per_iter", ".3f"), "Cost ratio": g("cost_ratio", ".2f"),
        "Final UA (%)": g("final_ua", ".1f"), "Final FID": g("final_fid", ".1f"),
    })


def write_efficiency(df: pd.DataFrame, out_dir, thresholds=(90.0, 95.0), tolerance: float = 0.05,
                     reference: str = "sfd", level: float = 0.95, references: dict | None = None) -> dict:
    """``efficiency.{csv,md,tex,json}`` in ``out_dir`` (the JSON holds the verdicts)."""
    from pathlib import Path

    from pecker.report.tables import latex_table, markdown_table

    out_dir = Path(out_dir)
    table = build_efficiency(df, thresholds, tolerance, reference, level, references)
    vs = verdicts(table, tolerance, level) if len(table) else []
    paths = {ext: out_dir / f"efficiency.{ext}" for ext in ("csv", "md", "tex", "json")}
    with io.atomic_path(paths["csv"]) as tmp:
        table.to_csv(tmp, index=False, float_format="%.10g")
    pct = f"{round(level * 100)}%"
    md = ["# Efficiency: time-to-forget, its ratio to " + reference + " and the per-iteration cost", ""]
    tex = ["% Efficiency table, written by `pecker report tables`; needs \\usepackage{booktabs}", ""]
    if table.empty:
        md += ["No unlearning runs with per-checkpoint evaluations.", ""]
    for ds in table["dataset"].unique() if len(table) else []:
        sub = table[table["dataset"] == ds]
        md += [f"## {ds}", "", markdown_table(display(sub)), ""]
        tex += [latex_table(display(sub), f"Efficiency: {ds}", f"tab:efficiency-{ds}"), ""]
    md += [f"Time-to-forget: first checkpoint with UA at the threshold and retained-class accuracy at most "
           f"{tolerance:g} below the teacher's, interpolated linearly between checkpoints; mean and {pct} "
           f"{stats.METHOD_T} among the seeds that reached it. Ratios to {reference}: {stats.METHOD_RATIO}, "
           f"computed when every seed of both methods reached the threshold. s / iteration: training "
           "wall-clock over steps (same hardware only).", "", "## Verdict", ""]
    md += [f"- {v['text']}" for v in vs] or ["- No method to compare with the reference."]
    io.atomic_write_text(paths["md"], "\n".join(md) + "\n")
    io.atomic_write_text(paths["tex"], "\n".join(tex))
    io.atomic_write_json(paths["json"], {"settings": {"thresholds": list(thresholds), "retained_tolerance": tolerance,
                                                      "reference_method": reference, "references": references or {},
                                                      "level": level,
                                                      "interval": stats.METHOD_T, "ratio": stats.METHOD_RATIO},
                                         "verdicts": vs})
    return paths
