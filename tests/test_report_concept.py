"""Tables 2-3, Figs 4-6 and their audit (pecker/report/concept.py) on synthetic concept metric JSONs."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pecker import io
from pecker.report import concept
from pecker.report.audit import audit
from pecker.report.paper import Paper

CFG = {"unlearn": {
    "batch_size": 8, "images_seen": "retain",
    "tasks": {"sneaker": {"type": "celebrity", "label": "Sneaker", "target": 7},
              "nudity": {"type": "nudity", "label": None}},
    "methods": {"sfd_sneaker": {"task": "sneaker", "mask": {"enabled": False}},
                "pecker_sneaker": {"task": "sneaker", "mask": {"enabled": True}},
                "sfd_nudity": {"task": "nudity", "mask": {"enabled": False}},
                "pecker_nudity": {"task": "nudity", "mask": {"enabled": True}}}}}
CELEB = {"share_without_object": 0.1, "gcd_analogue": 0.9, "n_images": 1000}
NUDE = {"inappropriate_probability": 0.3, "max_expected_inappropriateness": 0.8, "n_images": 600}


def record(tmp, method, seed, metrics, tasks, step=150, final=True):
    path = tmp / "fashion" / "eval" / method / f"seed{seed}" / ("final.json" if final else f"step{step:07d}.json")
    rec = {"dataset": "fashion", "method": method, "seed": seed, "final": final, "step": step, "tasks": tasks,
           "images_seen": 1200, "metrics": metrics,
           "substitutes": ["text-to-image stack: embedded instead of Stable Diffusion v1.4"],
           "detectors": {"object": "classifier", "nudenet": {"nudenet": "3.4.2"}},
           "checkpoint": {"sha256": "ab" * 32, "path": "x"},
           "provenance": {"git": {"commit": "c0ffee", "dirty": False}, "config_hash": "h" * 16}}
    io.atomic_write_json(path, rec)
    return {**rec, "_path": str(path)}


@pytest.fixture
def records(tmp_path):
    recs = [record(tmp_path, "teacher", 0, {"sneaker": CELEB, "nudity": NUDE}, ["nudity", "sneaker"]),
            record(tmp_path, "sld", 0, {"sneaker": {**CELEB, "gcd_analogue": 0.5}, "nudity": {**NUDE, "inappropriate_probability": 0.1}},
                   ["nudity", "sneaker"])]
    for seed, (g, u) in enumerate(((0.2, 0.05), (0.4, 0.07))):
        recs.append(record(tmp_path, "pecker_sneaker", seed, {"sneaker": {**CELEB, "gcd_analogue": g}}, ["sneaker"]))
        recs.append(record(tmp_path, "pecker_nudity", seed, {"nudity": {**NUDE, "inappropriate_probability": u}}, ["nudity"]))
    recs.append(record(tmp_path, "sfd_nudity", 0, {"nudity": {**NUDE, "inappropriate_probability": 0.2}}, ["nudity"]))
    recs.append(record(tmp_path, "sfd_nudity", 0, {"nudity": NUDE}, ["nudity"], step=30, final=False))  # not final
    return recs


def test_tables_rows_values_and_intervals(records, tmp_path):
    paths = concept.write_concept_tables(records, {"fashion": CFG}, tmp_path / "tables")
    t2, t3 = (pd.read_csv(paths[f"{n}.csv"]) for n in ("table2", "table3"))
    assert list(t2["method"]) == ["teacher", "sld", "pecker_sneaker"]  # no SFD sneaker run evaluated
    assert list(t3["method"]) == ["teacher", "sld", "sfd_nudity", "pecker_nudity"]
    p = t2.set_index("method").loc["pecker_sneaker"]
    assert p["gcd_analogue_mean"] == pytest.approx(0.3) and p["gcd_analogue_n"] == 2
    assert p["gcd_analogue_lo"] < 0.3 < p["gcd_analogue_hi"]
    assert t3.set_index("method").loc["sfd_nudity", "inappropriate_probability_mean"] == pytest.approx(0.2)
    md = paths["table2.md"].read_text()
    assert "30.00% [" in md and "SD v1.4 analogue" in md and "PECKER (1,200 images)" in md
    assert "embedded instead of Stable Diffusion" in md
    assert "20.00% (1 seed)" in paths["table3.md"].read_text()


def test_audit_pairs_cells_with_the_paper_and_flags_substitutes(records, tmp_path):
    paths = concept.write_concept_tables(records, {"fashion": CFG}, tmp_path / "tables")
    tables = {n: pd.read_csv(paths[f"{n}.csv"]) for n in ("table2", "table3")}
    res = audit(tables, records, Paper())
    cells = {(c.table, c.method, c.metric): c for c in res["_cells"]}
    teacher = cells[("table2", "teacher / sneaker", "gcd_analogue")]
    assert teacher.paper == 60.6 and teacher.ours == pytest.approx(90.0) and teacher.diff == pytest.approx(29.4)
    assert cells[("table3", "pecker_nudity / nudity", "inappropriate_probability")].paper == 3.18
    sfd = cells[("table3", "sfd_nudity / nudity", "inappropriate_probability")]
    assert sfd.paper == 11.03 and any("one-stage" in n for n in sfd.notes)
    assert any("sld-medium-i2p" in n for n in cells[("table3", "sld / nudity", "inappropriate_probability")].notes)
    assert all(c.substitute for c in res["_cells"]) and not res["missing_cells"]
    assert len(cells[("table2", "pecker_sneaker / sneaker", "gcd_analogue")].provenance) == 2
    assert "analogue" in res["datasets"]["fashion"]


def test_audit_refuses_a_stale_or_unsupported_cell(records, tmp_path):
    paths = concept.write_concept_tables(records, {"fashion": CFG}, tmp_path / "tables")
    t3 = pd.read_csv(paths["table3.csv"])
    t3.loc[t3["method"] == "teacher", "inappropriate_probability_mean"] = 0.5
    res = audit({"table3": t3}, records, Paper())
    assert res["missing_cells"] and any("teacher" in m for m in res["missing_cells"])
    no_prov = [{**r, "provenance": {}} if r["method"] == "sld" else r for r in records]
    res = audit({"table3": pd.read_csv(paths["table3.csv"])}, no_prov, Paper())
    assert any("sld" in m for m in res["missing_cells"])


def test_figures_take_checkpoints_across_the_budget(tmp_path):
    ev = tmp_path / "fashion" / "eval"
    grid = lambda v: np.full((3, 8, 8, 3), v, np.uint8)  # noqa: E731
    files = []
    for m in ("pecker_sneaker", "sfd_sneaker", "pecker_nudity", "sfd_nudity"):
        task = m.split("_")[1]
        for step in range(0, 160, 10):
            files.append(io.save_npz(ev / m / "seed0" / f"step{step:07d}_grid.npz", **{f"task_{task}": grid(step)}))
    for m in ("teacher", "sld"):
        files.append(io.save_npz(ev / m / "seed0" / "final_grid.npz", task_sneaker=grid(1), task_nudity=grid(2)))
    assert concept._near_fractions(list(range(0, 160, 10))) == [0, 30, 60, 90, 120, 150]
    rows = concept._checkpoint_rows(concept._grid_files(files), "pecker_nudity", "nudity", 8)
    assert [r[0].split("\n")[1] for r in rows] == [f"{s * 8:,} images" for s in (0, 30, 60, 90, 120, 150)]
    assert int(rows[-1][1][0, 0, 0, 0]) == 150
    out = concept.write_concept_figures(CFG, "fashion", files, tmp_path / "figs")
    from PIL import Image

    for name in ("fig4", "fig5", "fig6"):
        png, pdf = out[name]
        assert png.is_file() and pdf.is_file() and pdf.stat().st_size > 0
    # Fig. 4 and 6: 12 checkpoint rows (PECKER and SFD); Fig. 5: 4 model rows: taller figures for more rows
    h4, h5 = (Image.open(out[n][0]).size[1] for n in ("fig4", "fig5"))
    assert h4 > 2 * h5


def test_cli_commands(records, tmp_path):
    from click.testing import CliRunner

    from pecker.cli import main

    cfg = tmp_path / "cfg.yaml"
    import yaml

    from pecker.config import REPO_ROOT

    full = yaml.safe_load((REPO_ROOT / "config" / "test.yaml").read_text())
    cfg.write_text(yaml.safe_dump({"datasets": {"fashion-tiny": full["datasets"]["fashion-tiny"]}}))
    jsons = [r["_path"] for r in records]
    res = CliRunner().invoke(main, ["report", "concept-tables", "-c", str(cfg), "--out-dir", str(tmp_path / "t"), *jsons])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "t" / "table3.tex").is_file()
    res = CliRunner().invoke(main, ["report", "concept-figures", "-c", str(cfg), "-d", "fashion-tiny",
                                    "--out-dir", str(tmp_path / "f"), *jsons])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "f" / "fig6_fashion-tiny.pdf").is_file()
