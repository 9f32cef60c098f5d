"""Tables 2-3, Figs 4-6 and their audit (pecker/report/concept.py, the concept-* commands) on synthetic
concept metric JSONs and sample grids in the evaluation stage's format."""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import pandas as pd
import pytest
import yaml
from click.testing import CliRunner
from PIL import Image
from scipy import stats as sps

from pecker import io
from pecker.report import concept
from pecker.report.audit import audit
from pecker.report.paper import Paper

CFG = {"text": {"source": "minilm_wheel"}, "unlearn": {
    "batch_size": 8, "forget_batch_size": 8, "images_seen": "retain",
    "tasks": {"sneaker": {"type": "celebrity", "label": "Sneaker", "target": 7},
              "nudity": {"type": "nudity", "label": None}},
    "methods": {"sfd_sneaker": {"task": "sneaker", "mask": {"enabled": False}},
                "pecker_sneaker": {"task": "sneaker", "mask": {"enabled": True}},
                "sfd_nudity": {"task": "nudity", "mask": {"enabled": False}},
                "pecker_nudity": {"task": "nudity", "mask": {"enabled": True}}}},
    "evaluate": {"concept": {"grid_columns": 3}}}
CELEB = {"share_without_object": 0.1, "gcd_analogue": 0.9, "target_top1_share": 0.95, "n_images": 1000}
NUDE = {"inappropriate_probability": 0.3, "max_expected_inappropriateness": 0.8, "attribute_rate": 0.3,
        "nudenet_rate": 0.0, "n_prompts": 60, "n_images": 600}
SUBST = "text-to-image stack: embedded UNet instead of Stable Diffusion v1.4"


def record(tmp, method, seed, metrics, tasks, step=150, final=True, dataset="fashion", images_per_step=8):
    """One concept metric JSON, written where the evaluation stage writes it."""
    teacherlike = method in ("teacher", "sld")
    name = "final.json" if final else f"step{step:07d}.json"
    path = tmp / dataset / "eval" / method / f"seed{seed}" / name
    rec = {"dataset": dataset, "method": method, "seed": seed, "step": None if teacherlike else step, "final": final,
           "kind": method if teacherlike else "generator",
           "images_seen": None if teacherlike else step * images_per_step, "tasks": tasks, "metrics": metrics,
           "substitutes": [SUBST, "classifier max probability >= 0.5 (substitute for MTCNN faces)"],
           "detectors": {"object": "classifier max probability >= 0.5", "gcd": "classifier target probability",
                         "attribute": "inverted-image detector", "nudenet": {"nudenet": "3.4.2", "sha256": "n" * 64}},
           "checkpoint": {"sha256": "ab" * 32, "path": "x", "config_hash": "h" * 16},
           "training": {"steps": step, "images_seen": step * images_per_step},
           "provenance": {"git": {"commit": "c0ffee" * 6, "dirty": False}, "config_hash": "h" * 16}}
    io.atomic_write_json(path, rec)
    return {**rec, "_path": str(path)}


@pytest.fixture
def records(tmp_path):
    """teacher and SLD (both tasks), PECKER at two seeds per task, SFD nudity at one seed (+ a step JSON)."""
    both = ["sneaker", "nudity"]
    recs = [record(tmp_path, "teacher", 0, {"sneaker": CELEB, "nudity": NUDE}, both),
            record(tmp_path, "sld", 0, {"sneaker": {**CELEB, "gcd_analogue": 0.5},
                                        "nudity": {**NUDE, "inappropriate_probability": 0.1}}, both)]
    for seed, (g, u) in enumerate(((0.28, 0.05), (0.32, 0.07))):
        recs.append(record(tmp_path, "pecker_sneaker", seed, {"sneaker": {**CELEB, "gcd_analogue": g}}, ["sneaker"]))
        recs.append(record(tmp_path, "pecker_nudity", seed, {"nudity": {**NUDE, "inappropriate_probability": u}},
                           ["nudity"]))
    recs.append(record(tmp_path, "sfd_nudity", 0, {"nudity": {**NUDE, "inappropriate_probability": 0.2}}, ["nudity"]))
    recs.append(record(tmp_path, "sfd_nudity", 0, {"nudity": NUDE}, ["nudity"], step=30, final=False))  # not final
    return recs


def _tables(records, tmp_path, cfgs=None):
    paths = concept.write_concept_tables(records, {"fashion": CFG} if cfgs is None else cfgs, tmp_path / "tables")
    return paths, {n: pd.read_csv(paths[f"{n}.csv"]) for n in ("table2", "table3")}


# ----------------------------------------------------------------------------- tables


def test_tables_rows_columns_and_percent(records, tmp_path):
    paths, t = _tables(records, tmp_path)
    t2, t3 = t["table2"], t["table3"]
    assert list(t2["method"]) == ["teacher", "sld", "pecker_sneaker"]  # no SFD sneaker run was evaluated
    assert list(t3["method"]) == ["teacher", "sld", "sfd_nudity", "pecker_nudity"]
    assert list(t3["model"]) == ["SD v1.4 analogue (teacher, multi-step)", "SLD-Medium", "SFD (1.2k images)",
                                 "PECKER (1.2k images)"]
    assert list(t2["task_label"]) == ["Sneaker"] * 3 and list(t3["task_label"]) == ["nudity"] * 4  # label null
    # the CSV holds fractions; the final JSON, not the step-30 one, is behind SFD's row
    assert t3.set_index("method").loc["sfd_nudity", "inappropriate_probability_mean"] == pytest.approx(0.2)
    assert t2.set_index("method").loc["teacher", "gcd_analogue_mean"] == pytest.approx(0.9)
    md2, md3 = paths["table2.md"].read_text(), paths["table3.md"].read_text()
    header = next(line for line in md2.splitlines() if line.startswith("| Model"))
    assert [h.strip() for h in header.strip("|").split("|")] == [
        "Model", "Concept", "share w/o object (faces) (%) ↓", "GCD analogue (%) ↓", "Seeds"]
    teacher_row = next(line for line in md2.splitlines() if line.startswith("| SD v1.4 analogue"))
    assert "90.00% (1 seed)" in teacher_row and "10.00% (1 seed)" in teacher_row
    assert "| SFD (1.2k images)" in md3 and "20.00% (1 seed)" in md3
    assert SUBST in md2 and "substitute" in md2.split("##")[0].lower()  # the header says what a substitute is
    tex = paths["table3.tex"].read_text()
    assert r"\begin{tabular}" in tex and r"20.00\% (1 seed)" in tex and r"$\downarrow$" in tex


def test_two_seeds_give_the_student_t_interval(records, tmp_path):
    paths, t = _tables(records, tmp_path)
    p = t["table2"].set_index("method").loc["pecker_sneaker"]
    half = sps.t.ppf(0.975, 1) * np.std([0.28, 0.32], ddof=1) / math.sqrt(2)
    assert p["gcd_analogue_n"] == 2 and p["n_seeds"] == 2 and p["seeds"] == "0,1"
    assert p["gcd_analogue_mean"] == pytest.approx(0.3)
    assert (p["gcd_analogue_lo"], p["gcd_analogue_hi"]) == pytest.approx((0.3 - half, 0.3 + half))
    assert f"30.00% [{100 * (0.3 - half):.2f}, {100 * (0.3 + half):.2f}]" in paths["table2.md"].read_text()
    # an interval reaching below 0 % is printed clipped; the CSV keeps it
    half = sps.t.ppf(0.975, 1) * np.std([0.05, 0.07], ddof=1) / math.sqrt(2)
    q = t["table3"].set_index("method").loc["pecker_nudity"]
    assert q["inappropriate_probability_lo"] == pytest.approx(0.06 - half) and 0.06 - half < 0
    assert f"6.00% [0.00, {100 * (0.06 + half):.2f}]" in paths["table3.md"].read_text()
    # equal values over seeds: a zero-width interval, still not '(1 seed)'
    assert "10.00% [10.00, 10.00]" in paths["table2.md"].read_text()


def test_tables_without_config_name_rows_from_the_jsons(records, tmp_path):
    _, t = _tables(records, tmp_path, cfgs={})
    assert list(t["table3"]["model"]) == ["SD v1.4 analogue (teacher, multi-step)", "SLD-Medium",
                                          "SFD (1.2k images)", "PECKER (1.2k images)"]
    assert list(t["table2"]["method"]) == ["teacher", "sld", "pecker_sneaker"]


def test_empty_tables_say_so(tmp_path):
    paths = concept.write_concept_tables([], {}, tmp_path)
    assert "No results" in paths["table2.md"].read_text() and pd.read_csv(paths["table3.csv"]).empty


# ----------------------------------------------------------------------------- audit


def _cells(res):
    return {(c.table, c.method, c.metric): c for c in res["_cells"]}


def test_audit_pairs_cells_with_the_paper_and_flags_substitutes(records, tmp_path):
    _, tables = _tables(records, tmp_path)
    res = audit(tables, records, Paper())
    cells = _cells(res)
    teacher = cells[("table2", "teacher / sneaker", "gcd_analogue")]
    assert teacher.paper == 60.6 and teacher.ours == pytest.approx(90.0) and teacher.diff == pytest.approx(29.4)
    assert "SD v1.4" in teacher.comparison and "Brad Pitt" in teacher.comparison and "Sneaker" in teacher.comparison
    assert cells[("table2", "sld / sneaker", "share_without_object")].paper == 14.1
    pk = cells[("table3", "pecker_nudity / nudity", "inappropriate_probability")]
    assert pk.paper == 3.18 and pk.n == 2 and pk.ours_lo is not None and len(pk.provenance) == 2
    assert any("100,000" in n and "1,200" in n for n in pk.notes)  # images seen next to the paper's
    sfd = cells[("table3", "sfd_nudity / nudity", "inappropriate_probability")]
    assert sfd.paper == 11.03 and any("one-stage" in s for s in sfd.substitute)
    sld = cells[("table3", "sld / nudity", "inappropriate_probability")]
    assert sld.paper == 14.10 and any("sld-medium-i2p" in n and "14.97" in n for n in sld.notes)
    assert cells[("table3", "teacher / nudity", "max_expected_inappropriateness")].paper == 86.6
    assert all(SUBST in c.substitute for c in res["_cells"]) and not res["missing_cells"]
    assert "NudeNet" not in pk.provenance[0]["evaluator"] and "3.4.2" in pk.provenance[0]["evaluator"]
    assert pk.provenance[0]["samples"] == "600 images of 60 prompts"
    assert "analogue" in res["datasets"]["fashion"]


def test_audit_pairs_the_second_celebrity_task_with_the_second_celebrity(records, tmp_path):
    cfg = copy.deepcopy(CFG)
    cfg["unlearn"]["tasks"] = {"sneaker": CFG["unlearn"]["tasks"]["sneaker"],
                               "pullover": {"type": "celebrity", "label": "Pullover", "target": 2},
                               "nudity": CFG["unlearn"]["tasks"]["nudity"]}
    recs = [r for r in records if r["method"] in ("teacher", "sld")]
    for r in recs:
        r["metrics"]["pullover"] = {**CELEB, "share_without_object": 0.25}
    _, tables = _tables(recs, tmp_path, {"fashion": cfg})
    assert list(tables["table2"]["task_index"]) == [0, 0, 1, 1]
    cells = _cells(audit(tables, recs, Paper()))
    second = cells[("table2", "teacher / pullover", "share_without_object")]
    assert second.paper == 11.7 and "Angelina Jolie" in second.comparison and "Pullover" in second.comparison
    assert second.ours == pytest.approx(25.0) and second.diff == pytest.approx(13.3)
    assert cells[("table2", "sld / pullover", "gcd_analogue")].paper == 3.29


def test_audit_refuses_stale_unsupported_or_unprovenanced_cells(records, tmp_path):
    _, tables = _tables(records, tmp_path)
    t3 = tables["table3"].copy()
    t3.loc[t3["method"] == "teacher", "inappropriate_probability_mean"] = 0.5
    res = audit({"table3": t3}, records, Paper())
    assert res["missing_cells"] == ["table3 fashion/teacher / nudity/inappropriate probability"]
    no_prov = [{**r, "provenance": {}} if r["method"] == "sld" else r for r in records]
    res = audit({"table3": tables["table3"]}, no_prov, Paper())
    assert res["missing_cells"] and all("sld" in m for m in res["missing_cells"])
    no_det = [{**r, "detectors": {}} if r["method"] == "pecker_nudity" else r for r in records]
    res = audit({"table3": tables["table3"]}, no_det, Paper())
    assert any("pecker_nudity" in m for m in res["missing_cells"])
    res = audit({"table3": tables["table3"]}, [r for r in records if r["method"] != "sfd_nudity"], Paper())
    cell = _cells(res)[("table3", "sfd_nudity / nudity", "inappropriate_probability")]
    assert cell.missing == ["no metric JSON supports this value"]


def test_audit_command_takes_class_and_text_results(records, tmp_path):
    from pecker.report import results, tables as tab
    from pecker.report.cli import audit as audit_cmd
    from tests.test_report import result, write_result

    root = tmp_path / "results"
    class_jsons = [write_result(root, result(method="teacher", ua=0.5, fid=3.0)),
                   write_result(root, result(method="pecker", seed=0))]
    out = tmp_path / "tables"
    tab.write_tables(results.load_frame(class_jsons), out)
    concept.write_concept_tables(records, {"fashion": CFG}, out)
    args = ["--table", str(out / "table1.csv"), "--table", str(out / "ablation.csv"),
            "--table", str(out / "table2.csv"), "--table", str(out / "table3.csv"),
            "--out-md", str(out / "audit.md"), "--out-json", str(out / "audit.json"), "-q",
            *map(str, class_jsons), *(r["_path"] for r in records)]
    res = CliRunner().invoke(audit_cmd, args)
    assert res.exit_code == 0, res.output
    report = json.loads((out / "audit.json").read_text())
    by_table = {t: {c["dataset"] for c in report["cells"] if c["table"] == t} for t in ("table1", "table2", "table3")}
    assert by_table == {"table1": {"mnist"}, "table2": {"fashion"}, "table3": {"fashion"}}
    md = (out / "audit.md").read_text()
    assert "## table3: fashion" in md and "paper Table 3 / PECKER" in md and "sld-medium-i2p" in md
    # a concept cell without provenance fails the command
    rec = json.loads(open(records[0]["_path"]).read())
    rec["checkpoint"] = {}
    io.atomic_write_json(records[0]["_path"], rec)
    res = CliRunner().invoke(audit_cmd, args)
    assert res.exit_code == 1 and "teacher" in res.output


# ----------------------------------------------------------------------------- figures


def colour(step, col, method):
    """A tile colour that names (checkpoint step, column, method)."""
    return (50 + step, 40 + 60 * col, {"pecker": 90, "sfd": 170, "teacher": 10, "sld": 250}[method])


def write_grids(tmp_path, steps=range(0, 160, 10), ncol=3, res=16):
    ev = tmp_path / "fashion" / "eval"
    files = []

    def grid(step, method):
        return np.stack([np.full((res, res, 3), colour(step, c, method), np.uint8) for c in range(ncol)])

    for m in ("pecker_sneaker", "sfd_sneaker", "pecker_nudity", "sfd_nudity"):
        kind, task = m.split("_")
        for step in steps:
            path = ev / m / "seed0" / f"step{step:07d}_grid.npz"
            files.append(io.save_npz(path, **{f"task_{task}": grid(step, kind)}))
    for m in ("teacher", "sld"):
        files.append(io.save_npz(ev / m / "seed0" / "final_grid.npz", task_sneaker=grid(0, m), task_nudity=grid(0, m)))
    return files


def centres(png, colours):
    """Centre (y, x) of the pixels of each colour in the PNG (None where it does not occur)."""
    a = np.asarray(Image.open(png).convert("RGB")).astype(int)
    out = {}
    for key, c in colours.items():
        ys, xs = np.nonzero((a == np.array(c)).all(-1))
        out[key] = (ys.mean(), xs.mean()) if len(ys) > 50 else None
    return out


def test_checkpoint_choice():
    assert concept.checkpoint_steps(range(0, 160, 10)) == [0, 30, 60, 90, 120, 150]
    assert concept.checkpoint_steps([0, 30, 60, 90, 120, 150], total=150) == [0, 30, 60, 90, 120, 150]
    assert concept.checkpoint_steps([0, 50, 100], total=100) == [0, 50, 100]  # each once
    assert concept.checkpoint_steps(range(0, 200, 10), total=100) == [0, 20, 40, 60, 80, 100]
    assert concept.upscale(np.zeros((16, 16, 1), np.uint8)).shape == (64, 64, 3)
    assert concept.upscale(np.zeros((512, 512, 3), np.uint8)).shape == (512, 512, 3)
    img = np.arange(4, dtype=np.uint8).reshape(2, 2, 1)
    assert (concept.upscale(img, 4)[:2, :2, 0] == 0).all() and (concept.upscale(img, 4)[2:, 2:, 0] == 3).all()
    canvas = concept.tile_rows([np.zeros((3, 16, 16, 3), np.uint8)] * 2, size=64, pad=2)
    assert canvas.shape == (2 * 66 + 2, 3 * 66 + 2, 3)


def test_row_labels_are_images_seen_from_the_jsons(tmp_path):
    files = write_grids(tmp_path)
    # the JSONs count 8 images per step; the config's batch (2) must not be used
    recs = [record(tmp_path, "pecker_nudity", 0, {"nudity": NUDE}, ["nudity"], step=s, final=False) for s in (30, 60)]
    cfg = copy.deepcopy(CFG)
    cfg["unlearn"]["batch_size"] = 2
    data = concept.FigureData(concept.DatasetView("fashion", cfg), concept.grid_files(files), recs)
    rows = data.checkpoint_rows("pecker_nudity", "nudity")
    assert [r[0].split("\n")[0] for r in rows] == [f"{s * 8:,} images" for s in (0, 30, 60, 90, 120, 150)]
    assert int(rows[-1][1][0, 0, 0, 0]) == 50 + 150
    cfg["unlearn"]["steps"] = 100  # the run's steps, when the config gives them
    data = concept.FigureData(concept.DatasetView("fashion", cfg), concept.grid_files(files), recs)
    assert [r[0].split("\n")[1] for r in data.checkpoint_rows("sfd_nudity", "nudity")] == [
        f"(step {s})" for s in (0, 20, 40, 60, 80, 100)]


def test_figures_pixel_layout(tmp_path, records):
    files = write_grids(tmp_path)
    out = concept.write_concept_figures(CFG, "fashion", files, tmp_path / "figs", records=records)
    for name in ("fig4", "fig5", "fig6"):
        png, pdf = out[name]
        assert png.name == f"{name}_fashion.png" and png.is_file()
        assert pdf.read_bytes()[:4] == b"%PDF"
    picked = (0, 30, 60, 90, 120, 150)
    for name in ("fig4", "fig6"):  # rows = checkpoints, PECKER panel above SFD's, columns = prompts
        want = {(m, s, c): colour(s, c, m) for m in ("pecker", "sfd") for s in (*picked, 10) for c in range(3)}
        pos = centres(out[name][0], want)
        assert all(pos[(m, 10, c)] is None for m in ("pecker", "sfd") for c in range(3))  # not a picked step
        assert all(pos[(m, s, c)] is not None for m in ("pecker", "sfd") for s in picked for c in range(3)), name
        for m in ("pecker", "sfd"):
            for c in range(3):
                ys = [pos[(m, s, c)][0] for s in picked]
                assert ys == sorted(ys) and len(set(np.round(ys))) == 6
            for s in picked:
                xs = [pos[(m, s, c)][1] for c in range(3)]
                assert xs == sorted(xs) and xs[1] - xs[0] > 20
        assert pos[("pecker", 150, 0)][0] < pos[("sfd", 0, 0)][0]
    # Fig. 5: teacher, SLD, SFD, PECKER top to bottom, on the final (last) grids
    pos = centres(out["fig5"][0], {"teacher": colour(0, 0, "teacher"), "sld": colour(0, 0, "sld"),
                                   "sfd": colour(150, 0, "sfd"), "pecker": colour(150, 0, "pecker"),
                                   "early": colour(0, 0, "pecker")})
    assert pos["early"] is None
    ys = [pos[k][0] for k in ("teacher", "sld", "sfd", "pecker")]
    assert ys == sorted(ys)


def test_figures_without_grids_say_so(tmp_path):
    out = concept.write_concept_figures(CFG, "fashion", [], tmp_path)
    assert all(p.is_file() for ps in out.values() for p in ps)


# ----------------------------------------------------------------------------- CLI


def test_cli_commands(records, tmp_path):
    from pecker.cli import main
    from pecker.config import REPO_ROOT

    full = yaml.safe_load((REPO_ROOT / "config" / "test.yaml").read_text())
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump({"datasets": {"fashion": full["datasets"]["fashion-tiny"]}}))
    jsons = [r["_path"] for r in records]
    res = CliRunner().invoke(main, ["report", "concept-tables", "-c", str(cfg), "--out-dir", str(tmp_path / "t"),
                                    *jsons])
    assert res.exit_code == 0, res.output
    t3 = pd.read_csv(tmp_path / "t" / "table3.csv")
    assert list(t3["model"]) == ["SD v1.4 analogue (teacher, multi-step)", "SLD-Medium", "SFD (1.2k images)",
                                 "PECKER (1.2k images)"]
    assert (tmp_path / "t" / "table2.tex").is_file() and (tmp_path / "t" / "table3.md").is_file()
    files = write_grids(tmp_path, steps=(0, 2, 4))
    res = CliRunner().invoke(main, ["report", "concept-figures", "-c", str(cfg), "-d", "fashion",
                                    "--out-dir", str(tmp_path / "f"), *jsons, *map(str, files)])
    assert res.exit_code == 0, res.output
    for name in ("fig4", "fig5", "fig6"):
        assert (tmp_path / "f" / f"{name}_fashion.png").is_file() and (tmp_path / "f" / f"{name}_fashion.pdf").is_file()
    res = CliRunner().invoke(main, ["report", "concept-figures", "-c", str(cfg), "-d", "nope", *jsons])
    assert res.exit_code != 0
