"""Intervals over seeds, the one place the report computes them.

- :func:`t_interval`: mean and Student-t interval ``mean ± t_{(1+level)/2, n-1} s / sqrt(n)`` over the
  seeds' values (``s`` the sample standard deviation, ddof 1). One value: the mean, no interval.
- :func:`ratio_interval`: the ratio of two methods' times as the ratio of geometric means, with a
  Welch t-interval on the difference of mean log times (Welch-Satterthwaite degrees of freedom),
  exponentiated. Seeds of the two methods are treated as independent samples (each method's runs
  share only the teacher). With one value on a side, only the point ratio is given.

Both return plain dicts, so tables, figures, the verdict and the audit use the same numbers.
"""

from __future__ import annotations

import math
from typing import Iterable

import numpy as np
from scipy import stats

METHOD_T = "Student-t interval over seeds"
METHOD_RATIO = "ratio of geometric means, Welch t-interval on log values over seeds"


def _finite(values: Iterable) -> np.ndarray:
    a = np.asarray([float(v) for v in values if v is not None], dtype=float)
    return a[np.isfinite(a)]


def t_interval(values: Iterable, level: float = 0.95) -> dict:
    """``{"mean", "lo", "hi", "n", "std"}`` of the finite values (NaN where undefined)."""
    a = _finite(values)
    n = len(a)
    if n == 0:
        return {"mean": math.nan, "lo": math.nan, "hi": math.nan, "n": 0, "std": math.nan}
    mean = float(a.mean())
    if n == 1:
        return {"mean": mean, "lo": math.nan, "hi": math.nan, "n": 1, "std": math.nan}
    std = float(a.std(ddof=1))
    half = float(stats.t.ppf((1 + level) / 2, n - 1)) * std / math.sqrt(n)
    return {"mean": mean, "lo": mean - half, "hi": mean + half, "n": n, "std": std}


def ratio_interval(num: Iterable, den: Iterable, level: float = 0.95) -> dict:
    """Ratio ``geomean(num) / geomean(den)`` of positive values with its interval (see the module)."""
    a, b = _finite(num), _finite(den)
    a, b = a[a > 0], b[b > 0]
    out = {"ratio": math.nan, "lo": math.nan, "hi": math.nan, "n_num": len(a), "n_den": len(b), "df": math.nan}
    if not len(a) or not len(b):
        return out
    la, lb = np.log(a), np.log(b)
    diff = float(la.mean() - lb.mean())
    out["ratio"] = math.exp(diff)
    if len(a) < 2 or len(b) < 2:
        return out
    va, vb = la.var(ddof=1) / len(a), lb.var(ddof=1) / len(b)
    se = math.sqrt(va + vb)
    if se == 0:
        out.update(lo=out["ratio"], hi=out["ratio"], df=math.inf)
        return out
    df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
    half = float(stats.t.ppf((1 + level) / 2, df)) * se
    out.update(lo=math.exp(diff - half), hi=math.exp(diff + half), df=float(df))
    return out


def excludes_one(r: dict) -> bool | None:
    """Whether a ratio's interval lies entirely below or above 1 (None when it has no interval)."""
    if not (math.isfinite(r.get("lo", math.nan)) and math.isfinite(r.get("hi", math.nan))):
        return None
    return r["hi"] < 1 or r["lo"] > 1
