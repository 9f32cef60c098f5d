"""Intervals over seeds, time-to-forget and the generated verdict (pecker.report.stats / .efficiency)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from pecker.report import efficiency as eff
from pecker.report import stats


def test_t_interval_by_hand():
    v = [2.0, 4.0, 9.0]
    iv = stats.t_interval(v)
    mean, s = 5.0, math.sqrt(((2 - 5) ** 2 + (4 - 5) ** 2 + (9 - 5) ** 2) / 2)  # s = sqrt(13)
    half = 4.302652730 * s / math.sqrt(3)  # t_{0.975, 2}
    assert iv["mean"] == pytest.approx(mean) and iv["std"] == pytest.approx(s) and iv["n"] == 3
    assert iv["lo"] == pytest.approx(mean - half) and iv["hi"] == pytest.approx(mean + half)
    one = stats.t_interval([7.0, None, float("nan")])
    assert one["mean"] == 7.0 and one["n"] == 1 and math.isnan(one["lo"]) and math.isnan(one["hi"])
    assert stats.t_interval([])["n"] == 0


def test_ratio_interval_by_hand():
    a, b = [1.0, 2.0, 4.0], [4.0, 8.0, 8.0]
    r = stats.ratio_interval(a, b)
    la, lb = np.log(a), np.log(b)
    assert r["ratio"] == pytest.approx(math.exp(la.mean() - lb.mean()))
    va, vb = la.var(ddof=1) / 3, lb.var(ddof=1) / 3
    df = (va + vb) ** 2 / (va ** 2 / 2 + vb ** 2 / 2)
    from scipy import stats as sps

    half = sps.t.ppf(0.975, df) * math.sqrt(va + vb)
    assert r["df"] == pytest.approx(df)
    assert r["lo"] == pytest.approx(math.exp(la.mean() - lb.mean() - half))
    assert r["hi"] == pytest.approx(math.exp(la.mean() - lb.mean() + half))
    assert stats.excludes_one(r) is (r["hi"] < 1)
    assert stats.excludes_one(stats.ratio_interval([3.0], [4.0])) is None


def curve(ua, racc=None, steps=(0, 50, 100, 150), per_step=64, sec=2.0):
    racc = racc or [0.9] * len(ua)
    return pd.DataFrame({"step": list(steps), "images_seen": [s * per_step for s in steps],
                         "wall_clock_s": [s * sec for s in steps], "ua": ua, "retained_accuracy": racc})


def test_time_to_forget_between_checkpoints_interpolates():
    t = eff.time_to_forget(curve([10, 40, 80, 100]), 90, 0.8)
    assert t["reached"] and t["steps"] == pytest.approx(125.0)  # 80 -> 100 crosses 90 half-way
    assert t["images_seen"] == pytest.approx(125 * 64) and t["wall_clock_s"] == pytest.approx(250.0)


def test_time_to_forget_at_step_zero_never_and_non_monotone():
    assert eff.time_to_forget(curve([95, 96, 97, 99]), 90, 0.8) == {
        "reached": True, "steps": 0.0, "images_seen": 0.0, "wall_clock_s": 0.0}
    never = eff.time_to_forget(curve([10, 20, 30, 89.9]), 90, 0.8)
    assert never["reached"] is False and math.isnan(never["steps"])
    # reaches 90 at step 50 (first crossing), drops, rises again: the first crossing counts
    bumpy = eff.time_to_forget(curve([0, 100, 50, 100]), 90, 0.8)
    assert bumpy["steps"] == pytest.approx(45.0)


def test_time_to_forget_needs_retained_accuracy():
    # UA is there from step 50 but retained accuracy only recovers at step 100 (0.7 -> 0.9 crosses 0.8 half-way)
    t = eff.time_to_forget(curve([0, 95, 95, 95], racc=[0.9, 0.7, 0.9, 0.9]), 90, 0.8)
    assert t["steps"] == pytest.approx(75.0)
    assert not eff.time_to_forget(curve([0, 95, 95, 95], racc=[0.9, 0.7, 0.7, 0.7]), 90, 0.8)["reached"]


def frame(spec, steps=(0, 50, 100, 150)):
    """results.to_frame-like rows: spec = {method: [ua curve per seed]}; the teacher's retained acc. 0.9."""
    rows = [{"dataset": "mnist", "method": "teacher", "seed": 0, "step": pd.NA, "final": True, "ua": 1.0,
             "retained_accuracy": 0.9, "fid": 5.0, "wall_clock_s": np.nan, "train_steps": np.nan, "images_seen": np.nan}]
    for method, seeds in spec.items():
        for seed, ua in enumerate(seeds):
            for s, u in zip(steps, ua):
                rows.append({"dataset": "mnist", "method": method, "seed": seed, "step": s, "final": False, "ua": u,
                             "retained_accuracy": 0.9, "fid": 20.0, "wall_clock_s": s * (2.0 + 0.1 * seed),
                             "train_steps": s, "images_seen": s * 64})
            rows.append({"dataset": "mnist", "method": method, "seed": seed, "step": steps[-1], "final": True,
                         "ua": ua[-1], "retained_accuracy": 0.9, "fid": 20.0 + seed,
                         "wall_clock_s": steps[-1] * (2.0 + 0.1 * seed), "train_steps": steps[-1],
                         "images_seen": steps[-1] * 64})
    df = pd.DataFrame(rows)
    df["step"] = pd.array(df["step"], dtype="Int64")
    return df


def test_efficiency_table_and_verdict_faster():
    df = frame({"sfd": [[0, 20, 60, 100], [0, 30, 70, 100], [0, 25, 65, 100]],
                "pecker": [[0, 95, 99, 100], [0, 92, 99, 100], [0, 97, 99, 100]]})
    t = eff.build_efficiency(df, thresholds=(90,))
    pk = t.set_index("method").loc["pecker"]
    assert pk["n_reached"] == 3 and pk["ratio_images_seen_mean"] < 0.5 and pk["ratio_images_seen_hi"] < 1
    assert pk["cost_ratio_mean"] == pytest.approx(1.0)
    [v] = eff.verdicts(t, 0.05)
    assert v["outcome"] == "faster" and "pecker forgets faster than sfd in images seen" in v["text"]
    assert v["outcome_wall_clock"] == "faster" and "in images seen and in wall-clock" in v["text"]
    assert "3 + 3 seeds" in v["text"]


def test_verdict_no_difference_and_not_reached():
    same = frame({"sfd": [[0, 80, 95, 100], [0, 60, 91, 100]], "pecker": [[0, 70, 95, 100], [0, 85, 92, 100]]})
    [v] = eff.verdicts(eff.build_efficiency(same, thresholds=(90,)), 0.05)
    assert v["outcome"] == "no difference shown" and "interval includes 1" in v["text"]
    slow = frame({"sfd": [[0, 10, 20, 30], [0, 10, 20, 95]], "pecker": [[0, 95, 99, 100], [0, 92, 99, 100]]})
    t = eff.build_efficiency(slow, thresholds=(90,))
    assert math.isnan(t.set_index("method").loc["pecker", "ratio_images_seen_mean"])
    [v] = eff.verdicts(t, 0.05)
    assert v["outcome"].startswith("faster") and "sfd in 1 of 2" in v["text"]


def test_write_efficiency(tmp_path):
    df = frame({"sfd": [[0, 20, 60, 100]], "pecker": [[0, 95, 99, 100]]})
    paths = eff.write_efficiency(df, tmp_path, thresholds=(90, 95))
    md = paths["md"].read_text()
    assert "## Verdict" in md and "(1 seed)" in md and "pecker / sfd time-to-forget" in md
    import json

    js = json.loads(paths["json"].read_text())
    assert js["settings"]["reference_method"] == "sfd" and len(js["verdicts"]) == 2
    assert all(v["outcome"].startswith("undetermined (one seed") for v in js["verdicts"])
    assert pd.read_csv(paths["csv"]).shape[0] == 4
