"""Fig. 2 (sample grids across checkpoints), Fig. 3 (UA / FID curves) and the ablation figure.

Every figure is written as PNG and PDF (Agg backend, no timestamps in the files). A figure whose
inputs are absent (no grids, no ablation variants) is still written, saying so, so that the
Snakemake outputs do not depend on which runs exist.
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from pecker import io  # noqa: E402
from pecker.report import stats  # noqa: E402
from pecker.report.results import BASELINES, MAIN_METHODS, TEACHER, curves, load_grid, order_methods  # noqa: E402

AXES_X = (("step", "training steps"), ("images_seen", "images seen"), ("wall_clock_s", "wall-clock (s)"))
CURVE_METRICS = (("ua", "UA (%) ↑"), ("fid", "FID ↓"))
BAR_METRICS = (("ua", "UA (%) ↑"), ("fid", "FID ↓"), ("is_mean", "IS ↑"), ("precision", "precision ↑"))


def save_figure(fig, prefix: str | Path) -> list[Path]:
    """``prefix.png`` and ``prefix.pdf``, each written atomically; closes the figure."""
    prefix = Path(prefix)
    out = []
    for ext, meta in (("png", {"Software": None}), ("pdf", {"CreationDate": None, "Producer": None})):
        path = prefix.with_name(prefix.name + f".{ext}")
        with io.atomic_path(path) as tmp:
            fig.savefig(tmp, format=ext, dpi=150, bbox_inches="tight", metadata=meta)
        out.append(path)
    plt.close(fig)
    return out


def placeholder(prefix: str | Path, title: str, message: str) -> list[Path]:
    fig, ax = plt.subplots(figsize=(6, 2))
    ax.axis("off")
    ax.set_title(title)
    ax.text(0.5, 0.5, message, ha="center", va="center", wrap=True, fontsize=10)
    return save_figure(fig, prefix)


def _spaced(values: list, k: int) -> list:
    """At most ``k`` values, evenly spaced, always with the first and the last."""
    if len(values) <= k:
        return list(values)
    idx = sorted({round(i * (len(values) - 1) / (k - 1)) for i in range(k)})
    return [values[i] for i in idx]


def montage(images: list[np.ndarray], rows: int, cols: int, pad: int = 1) -> np.ndarray:
    """Tile H x W x C uint8 images row-major into one image (white padding; empty tiles stay white)."""
    h, w, c = images[0].shape
    canvas = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, c), 255, np.uint8)
    for i, img in enumerate(images[: rows * cols]):
        r, q = divmod(i, cols)
        canvas[pad + r * (h + pad): pad + r * (h + pad) + h, pad + q * (w + pad): pad + q * (w + pad) + w] = img
    return canvas


def _show(ax, img: np.ndarray) -> None:
    if img.shape[-1] == 1:
        ax.imshow(img[..., 0], cmap="gray", vmin=0, vmax=255, interpolation="nearest")
    else:
        ax.imshow(img, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])


def figure2(grids: pd.DataFrame, dataset: str, forget_class: int, cover_class: int, prefix: str | Path,
            n_forget: int = 6, n_steps: int = 8, n_retained_steps: int = 4) -> list[Path]:
    """One row per unlearning method (its lowest seed): the forget-class samples at up to ``n_steps``
    checkpoints (columns = checkpoints, rows = fixed noise), then one retained-class grid (one sample per
    retained class, 2 rows) at up to ``n_retained_steps`` checkpoints."""
    g = grids[(grids["dataset"] == dataset) & (grids["method"] != TEACHER)]
    title = f"Fig. 2 ({dataset}): forget class {forget_class} -> cover class {cover_class}"
    if g.empty:
        return placeholder(prefix, title, f"No sample grids were evaluated for dataset {dataset}.")
    methods = order_methods(g["method"])
    panels = []
    for method in methods:
        gm = g[g["method"] == method]
        seed = int(gm["seed"].min())
        gm = gm[gm["seed"] == seed].sort_values("step")
        loaded = {int(r.step): load_grid(r.path) for r in gm.itertuples()}
        steps = sorted(loaded)
        fsteps = _spaced(steps, n_steps)
        k = min([n_forget] + [int((loaded[s][1] == forget_class).sum()) for s in fsteps])
        forget_cols = [loaded[s][0][loaded[s][1] == forget_class][:k] for s in fsteps]
        # column-major strip: rows = noise index, columns = checkpoints
        strip = montage([forget_cols[c][r] for r in range(k) for c in range(len(fsteps))], k, len(fsteps)) if k else None
        grids_r = []
        for s in _spaced(steps, n_retained_steps):
            imgs, labels = loaded[s]
            classes = [c for c in sorted(set(labels.tolist())) if c != forget_class]
            firsts = [imgs[np.flatnonzero(labels == c)[0]] for c in classes]
            if firsts:
                grids_r.append((s, montage(firsts, 2, math.ceil(len(firsts) / 2)), classes))
        panels.append((method, seed, fsteps, k, strip, grids_r))

    # Widths and heights in tiles, so that a sample has the same size in every panel.
    n_ret = max(len(p[5]) for p in panels)
    ret_cols = max((math.ceil(len(p[5][0][2]) / 2) for p in panels if p[5]), default=5)
    strip_cols = max(len(p[2]) for p in panels)
    rows = max(2, max(p[3] for p in panels))
    widths = [strip_cols] + [ret_cols] * n_ret
    tile = 0.3  # inches
    fig = plt.figure(figsize=(tile * sum(widths) + 0.4 * len(widths) + 1.0, (tile * rows + 0.9) * len(panels) + 0.5))
    gs = fig.add_gridspec(len(panels), 1 + n_ret, width_ratios=widths, wspace=0.12, hspace=0.5)
    for i, (method, seed, fsteps, k, strip, grids_r) in enumerate(panels):
        ax = fig.add_subplot(gs[i, 0])
        if strip is None:
            ax.axis("off")
            ax.text(0.5, 0.5, f"no class-{forget_class} samples", ha="center", va="center")
        else:
            _show(ax, strip)
            tile = (strip.shape[1] - 1) / len(fsteps)
            ax.set_xticks([1 + tile * (j + 0.5) for j in range(len(fsteps))])
            ax.set_xticklabels([str(s) for s in fsteps], fontsize=7, rotation=45)
            ax.set_xlabel("checkpoint (step)", fontsize=8)
        ax.set_ylabel(f"{method}\n(seed {seed})", fontsize=9)
        if i == 0:
            ax.set_title(f"forget class {forget_class}", fontsize=9)
        for j in range(n_ret):
            axr = fig.add_subplot(gs[i, 1 + j])
            if j < len(grids_r):
                s, img, classes = grids_r[j]
                _show(axr, img)
                axr.set_title(f"retained, step {s}", fontsize=8)
            else:
                axr.axis("off")
    fig.suptitle(title, fontsize=11)
    return save_figure(fig, prefix)


def _teacher_value(df: pd.DataFrame, dataset: str, metric: str) -> float | None:
    t = df[(df["dataset"] == dataset) & (df["method"] == TEACHER) & df["final"]][metric].dropna()
    return float(t.mean()) if len(t) else None


def seed_band(data: pd.DataFrame, x: str, y: str, level: float = 0.95) -> pd.DataFrame:
    """Per checkpoint step of one method: mean ``x`` and mean ``y`` over seeds with the Student-t
    interval of ``y`` (:func:`pecker.report.stats.t_interval`). On the wall-clock axis the mean sits
    at the seeds' mean wall-clock of that step."""
    rows = []
    for step, g in data.groupby("step"):
        iv = stats.t_interval(g[y], level)
        rows.append({"step": step, "x": float(g[x].mean()), "mean": iv["mean"], "lo": iv["lo"], "hi": iv["hi"],
                     "n": iv["n"]})
    return pd.DataFrame(rows, columns=["step", "x", "mean", "lo", "hi", "n"]).sort_values("x")


def _curve_panel(ax, cur: pd.DataFrame, x: str, y: str, methods: list[str], ref: float | None) -> None:
    """Each seed as a thin line, the mean over seeds as a thick line with its 95% band."""
    data = cur[cur["method"].isin(methods)].dropna(subset=[x, y])
    if data.empty:
        ax.text(0.5, 0.5, f"{x} not recorded" if cur[x].isna().all() else "no values", ha="center",
                va="center", transform=ax.transAxes)
    else:
        palette = sns.color_palette(n_colors=max(len(methods), 1))
        for i, method in enumerate(m for m in methods if m in set(data["method"])):
            dm, color = data[data["method"] == method], palette[i % len(palette)]
            for _, g in dm.groupby("seed"):
                g = g.sort_values("step")
                ax.plot(g[x], g[y], color=color, lw=0.7, alpha=0.35)
            band = seed_band(dm, x, y)
            n = int(dm["seed"].nunique())
            ax.plot(band["x"], band["mean"], color=color, lw=1.8, marker="o", ms=3,
                    label=f"{method} (mean of {n} seed{'s' if n > 1 else ''})")
            if band["lo"].notna().any():
                ax.fill_between(band["x"], band["lo"], band["hi"], color=color, alpha=0.2, lw=0)
    if ref is not None:
        ax.axhline(ref, color="grey", ls="--", lw=1, label="teacher")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)


def figure3(df: pd.DataFrame, dataset: str, prefix: str | Path, methods: list[str] | None = None,
            title: str | None = None) -> list[Path]:
    """UA and FID (rows) against steps, images seen and wall-clock (columns): every seed, and the mean
    over seeds with its 95% Student-t band."""
    cur = curves(df[df["dataset"] == dataset])
    if methods is None:
        present = set(cur["method"])
        methods = [m for m in MAIN_METHODS if m in present] or order_methods(present - {TEACHER})
    title = title or f"Fig. 3 ({dataset}): UA and FID during unlearning, {' vs '.join(methods) or 'no runs'}"
    if cur.empty or not methods:
        return placeholder(prefix, title, f"No per-checkpoint evaluations for dataset {dataset}.")
    fig, axes = plt.subplots(len(CURVE_METRICS), len(AXES_X), figsize=(13, 6.5), squeeze=False)
    for i, (y, ylabel) in enumerate(CURVE_METRICS):
        ref = _teacher_value(df, dataset, y)
        for j, (x, xlabel) in enumerate(AXES_X):
            ax = axes[i, j]
            _curve_panel(ax, cur, x, y, methods, ref)
            ax.set_xlabel(xlabel)
            ax.set_ylabel(ylabel)
    fig.suptitle(title)
    fig.tight_layout()
    return save_figure(fig, prefix)


def has_variants(df: pd.DataFrame, dataset: str) -> bool:
    methods = set(df[df["dataset"] == dataset]["method"])
    return bool(methods - {TEACHER, *MAIN_METHODS, *BASELINES})


def figure_ablation(df: pd.DataFrame, dataset: str, prefix: str | Path) -> list[Path]:
    """Final UA / FID / IS / precision per method (bars, sd over seeds), and UA / FID against steps."""
    sub = df[(df["dataset"] == dataset) & ~df["method"].isin((TEACHER, *BASELINES))]
    title = f"Ablation ({dataset}): unlearning variants"
    if not has_variants(df, dataset):
        present = ", ".join(order_methods(sub["method"])) or "none"
        return placeholder(prefix, title, f"No ablation runs were configured for dataset {dataset} "
                                          f"(evaluated methods: {present}).")
    methods = order_methods(sub["method"])
    fin = sub[sub["final"]]
    fig, axes = plt.subplots(2, len(BAR_METRICS), figsize=(3.4 * len(BAR_METRICS), 7), squeeze=False)
    for j, (m, label) in enumerate(BAR_METRICS):
        ax = axes[0, j]
        data = fin.dropna(subset=[m])
        if data.empty:
            ax.text(0.5, 0.5, "not computed", ha="center", va="center", transform=ax.transAxes)
        else:
            sns.barplot(data=data, x="method", y=m, order=[x for x in methods if x in set(data["method"])],
                        errorbar="sd", ax=ax, color="C0")
            sns.stripplot(data=data, x="method", y=m, order=[x for x in methods if x in set(data["method"])],
                          color="k", size=3, ax=ax)
        ref = _teacher_value(df, dataset, m)
        if ref is not None:
            ax.axhline(ref, color="grey", ls="--", lw=1)
        ax.set_ylabel(label)
        ax.set_xlabel("")
        ax.tick_params(axis="x", rotation=45, labelsize=7)
    cur = curves(sub)
    for j, (y, ylabel) in enumerate(CURVE_METRICS):
        ax = axes[1, j]
        _curve_panel(ax, cur, "step", y, methods, _teacher_value(df, dataset, y))
        ax.set_xlabel("training steps")
        ax.set_ylabel(ylabel)
    for j in range(len(CURVE_METRICS), len(BAR_METRICS)):
        axes[1, j].axis("off")
    fig.suptitle(title + " (bars: final EMA generator; dashed: teacher)")
    fig.tight_layout()
    return save_figure(fig, prefix)


def write_figures(df: pd.DataFrame, grids: pd.DataFrame, dataset: str, out_dir: str | Path,
                  forget_class: int = 0, cover_class: int = 1) -> dict[str, list[Path]]:
    """``fig2_{dataset}``, ``fig3_{dataset}`` and ``ablation_{dataset}`` (.png and .pdf) in ``out_dir``."""
    out_dir = Path(out_dir)
    with plt.rc_context():
        sns.set_theme(style="whitegrid", context="paper")
        return {
            "fig2": figure2(grids, dataset, forget_class, cover_class, out_dir / f"fig2_{dataset}"),
            "fig3": figure3(df, dataset, out_dir / f"fig3_{dataset}"),
            "ablation": figure_ablation(df, dataset, out_dir / f"ablation_{dataset}"),
        }
