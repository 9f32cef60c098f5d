"""Load the evaluation stage's metric JSONs into pandas.

One JSON per evaluated checkpoint: ``results/{dataset}/eval/{method}/seed{seed}/step{NNNNNNN}.json`` and
the final EMA generator ``.../final.json`` (the teacher: method ``teacher``, seed 0, ``final.json`` only).
Fig. 2 grids sit next to them as ``step{NNNNNNN}_grid.npz``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd

from pecker import io

METRICS = (
    "ua", "retained_accuracy", "fid", "kid_mean", "kid_std", "precision", "recall", "is_mean", "is_std",
    "forget_class_prob_mean", "forget_entropy_mean", "cover_share",
)
TEACHER = "teacher"
MAIN_METHODS = ("sfd", "pecker")
# Table 1's other rows (docs/method.md section 5): not ablation variants of PECKER
BASELINES = ("retrain", "sa", "salun", "sfd_stage1", "sfd_two_stage")
ROW_ORDER = (TEACHER, "retrain", "sa", "salun", "sfd", "sfd_stage1", "sfd_two_stage", "pecker")

_PATH_RE = re.compile(r"(?P<dataset>[^/]+)/eval/(?P<method>[^/]+)/seed(?P<seed>\d+)/(?:step(?P<step>\d+)|final)\.json$")
_GRID_RE = re.compile(r"(?P<dataset>[^/]+)/eval/(?P<method>[^/]+)/seed(?P<seed>\d+)/step(?P<step>\d+)_grid\.npz$")


class ResultsError(ValueError):
    """A metric JSON is unreadable or lacks the keys every result must have."""


def discover(results_dir: str | Path = "results", datasets: Iterable[str] | None = None) -> list[Path]:
    """Metric JSONs under ``results_dir`` (for running by hand; Snakemake passes the files explicitly)."""
    root = Path(results_dir)
    names = list(datasets) if datasets else sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    out: list[Path] = []
    for ds in names:
        for p in sorted((root / ds / "eval").glob("*/seed*/*.json")):
            if _PATH_RE.search(p.as_posix()):
                out.append(p)
    return out


def discover_grids(results_dir: str | Path, dataset: str) -> list[Path]:
    root = Path(results_dir) / dataset / "eval"
    return [p for p in sorted(root.glob("*/seed*/step*_grid.npz")) if _GRID_RE.search(p.as_posix())]


def order_methods(methods: Iterable[str]) -> list[str]:
    """Table 1's order (teacher, retrain, sa, salun, sfd, sfd_stage1, sfd_two_stage, pecker), then the
    other methods (variants) alphabetically."""
    methods = list(dict.fromkeys(methods))
    first = [m for m in ROW_ORDER if m in methods]
    return first + sorted(m for m in methods if m not in first)


def load_record(path: str | Path) -> dict:
    """One metric JSON, with ``_path`` added; dataset/method/seed fall back on the path's parts."""
    path = Path(path)
    try:
        rec = io.read_json(path)
    except (OSError, ValueError) as err:
        raise ResultsError(f"{path}: cannot read metric JSON ({err})") from None
    if not isinstance(rec, dict):
        raise ResultsError(f"{path}: a metric JSON must hold an object")
    m = _PATH_RE.search(path.as_posix())
    for key in ("dataset", "method", "seed"):
        if rec.get(key) is None:
            if m is None:
                raise ResultsError(f"{path}: key {key!r} missing and the path is not "
                                   "{dataset}/eval/{method}/seed{seed}/(stepNNNNNNN|final).json")
            rec[key] = m.group(key)
    if rec.get("final") is None:
        rec["final"] = path.name == "final.json"
    if not isinstance(rec.get("metrics"), dict):
        raise ResultsError(f"{path}: key 'metrics' missing or not an object")
    rec["seed"] = int(rec["seed"])
    rec["_path"] = str(path)
    return rec


def load_records(paths: Iterable[str | Path]) -> list[dict]:
    return [load_record(p) for p in paths]


def nested_get(d, *keys):
    for k in keys:
        if not isinstance(d, dict):
            return None
        d = d.get(k)
    return d


def _num(x) -> float:
    try:
        return float(x) if x is not None else np.nan
    except (TypeError, ValueError):
        return np.nan


def to_frame(records: list[dict]) -> pd.DataFrame:
    """One row per metric JSON: identity, every metric (NaN when null), training cost, provenance keys."""
    metric_keys = list(METRICS) + sorted({k for r in records for k in r["metrics"]} - set(METRICS))
    rows = []
    for r in records:
        tr = r.get("training") or {}
        row = {
            "dataset": str(r["dataset"]), "method": str(r["method"]), "seed": r["seed"],
            "step": r.get("step"), "final": bool(r.get("final")),
            "images_seen": _num(r.get("images_seen") if r.get("images_seen") is not None else tr.get("images_seen")),
            "data_free": r.get("data_free"),
            "train_steps": _num(tr.get("steps")),
            "wall_clock_s": _num(tr.get("wall_clock_s")),
            "peak_memory_mb": _num(tr.get("peak_memory_mb")),
            "commit": nested_get(r, "provenance", "git", "commit"),
            "dirty": nested_get(r, "provenance", "git", "dirty"),
            "config_hash": nested_get(r, "provenance", "config_hash"),
            "checkpoint_sha256": nested_get(r, "checkpoint", "sha256"),
            "path": r["_path"],
        }
        for k in metric_keys:
            row[k] = _num(r["metrics"].get(k))
        rows.append(row)
    cols = ["dataset", "method", "seed", "step", "final", "images_seen", "data_free", "train_steps", "wall_clock_s",
            "peak_memory_mb", *metric_keys, "commit", "dirty", "config_hash", "checkpoint_sha256", "path"]
    df = pd.DataFrame(rows, columns=cols)
    df["step"] = pd.to_numeric(df["step"], errors="coerce").astype("Int64")
    df["seed"] = df["seed"].astype(int)
    return df


def load_frame(paths: Iterable[str | Path]) -> pd.DataFrame:
    return to_frame(load_records(paths))


def curves(df: pd.DataFrame) -> pd.DataFrame:
    """The per-checkpoint rows (``step*.json``, not the final EMA), sorted by dataset, method, seed, step."""
    cur = df[~df["final"] & df["step"].notna()].copy()
    cur["step"] = cur["step"].astype(int)
    return cur.sort_values(["dataset", "method", "seed", "step"]).reset_index(drop=True)


def load_grid(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """``(images uint8 N x H x W x C, labels)`` of a Fig. 2 grid file (NCHW or float images are converted)."""
    z = io.load_npz(path)
    if "images" not in z or "labels" not in z:
        raise ResultsError(f"{path}: a grid file needs arrays 'images' and 'labels' (has {sorted(z)})")
    img, labels = np.asarray(z["images"]), np.asarray(z["labels"]).astype(int)
    if img.ndim == 3:
        img = img[..., None]
    if img.ndim != 4:
        raise ResultsError(f"{path}: 'images' must be N x H x W x C, got shape {img.shape}")
    if img.shape[1] in (1, 3) and img.shape[-1] not in (1, 3):
        img = img.transpose(0, 2, 3, 1)
    if img.dtype != np.uint8:
        f = img.astype(np.float64)
        if f.min() < 0:
            f = (f + 1) / 2
        if f.max() <= 1.0 + 1e-6:
            f = f * 255
        img = np.clip(np.rint(f), 0, 255).astype(np.uint8)
    if len(img) != len(labels):
        raise ResultsError(f"{path}: {len(img)} images but {len(labels)} labels")
    return img, labels


def grid_index(paths: Iterable[str | Path]) -> pd.DataFrame:
    """dataset, method, seed, step and path of each ``step*_grid.npz``."""
    rows = []
    for p in paths:
        m = _GRID_RE.search(Path(p).as_posix())
        if m is None:
            raise ResultsError(f"{p}: not a grid path {{dataset}}/eval/{{method}}/seed{{seed}}/stepNNNNNNN_grid.npz")
        rows.append({"dataset": m["dataset"], "method": m["method"], "seed": int(m["seed"]),
                     "step": int(m["step"]), "path": str(p)})
    return pd.DataFrame(rows, columns=["dataset", "method", "seed", "step", "path"])
