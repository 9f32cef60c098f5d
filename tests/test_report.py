"""Tables, figures and the paper audit on synthetic metric JSONs (the evaluation stage's format)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from pecker import io
from pecker.report import audit as aud
from pecker.report import figures, results, tables
from pecker.report.cli import audit as audit_cmd
from pecker.report.cli import report as report_cmd
from pecker.report.paper import Paper, load_paper

REPO = Path(__file__).resolve().parents[1]
CLF = {"arch": {"name": "small_cnn", "width": 8}, "sha256": "c" * 64, "heldout_accuracy": 0.98, "substitute": True}
FID_SRC = {"library": "torch-fidelity", "version": "0.4.0", "function": "metric_fid.fid_statistics_to_metric",
           "extractor": "nvidia-inception-2015-12-05-torchscript",
           "extractor_sha256": "7ff4a85c" + "0" * 56, "n_gen": 900, "n_ref": 4500, "substitute": False,
           "cross_check": {"library": "clean-fid", "version": "0.1.35", "function": "fid.frechet_distance",
                           "value": 12.31}}
IS_SRC = {"library": "torch-fidelity", "version": "0.4.0", "function": "metric_isc.isc_features_to_metric",
          "source": "ua-classifier-logits", "substitute": True, "n": 900}


def result(dataset="mnist", method="pecker", seed=0, step=None, final=True, ua=98.0, fid=12.0, **over) -> dict:
    """One metric JSON as the evaluation stage writes it."""
    rec = {
        "dataset": dataset, "method": method, "seed": seed, "step": step, "final": final,
        "images_seen": None if step is None else step * 64, "data_free": method != "teacher" or None,
        "metrics": {"ua": ua, "retained_accuracy": 0.95, "fid": fid, "kid_mean": 0.01, "kid_std": 0.002,
                    "precision": 0.61, "recall": 0.4, "is_mean": 8.1, "is_std": 0.1,
                    "forget_class_prob_mean": 0.01, "forget_entropy_mean": 0.3, "cover_share": 0.97},
        "metric_sources": {
            "ua": {"classifier": CLF, "substitute": True}, "retained_accuracy": {"classifier": CLF, "substitute": True},
            "fid": FID_SRC, "kid_mean": FID_SRC, "precision": FID_SRC, "recall": FID_SRC,
            "is_mean": IS_SRC},
        "samples": {"per_class": 100, "n_forget": 500, "seed": 0},
        "reference": {"n_images": 4500, "classes": list(range(1, 10)), "sha256": "r" * 64},
        "checkpoint": {"path": f"results/{dataset}/unlearn/{method}/seed{seed}/generator_ema", "sha256": f"{seed}" * 64},
        "training": {"steps": 400 if step is None else step, "images_seen": (400 if step is None else step) * 64,
                     "wall_clock_s": (400 if step is None else step) * (1.5 + 0.1 * seed),
                     "peak_memory_mb": 900.1},
        "substitutes": [f"dataset: {dataset} instead of cifar10", "classifier: small_cnn instead of ImageNet ResNet-34",
                        "IS from UA-classifier logits"],
        "provenance": {"git": {"commit": "a" * 40, "dirty": False}, "config_hash": "0123456789abcdef",
                       "packages": {}, "seeds": {"seed": seed}, "wall_clock_s": 12.0, "memory": {}},
    }
    for k, v in over.items():
        rec[k] = v
    return rec


def write_result(root: Path, rec: dict) -> Path:
    name = "final.json" if rec["final"] else f"step{rec['step']:07d}.json"
    return io.atomic_write_json(root / rec["dataset"] / "eval" / rec["method"] / f"seed{rec['seed']}" / name, rec)


def write_grid(root: Path, dataset: str, method: str, seed: int, step: int, res: int = 8) -> Path:
    rng = np.random.default_rng(step)
    labels = np.array([0] * 4 + [c for c in range(1, 10) for _ in range(2)], np.int64)
    images = rng.integers(0, 255, (len(labels), res, res, 1), dtype=np.uint8)
    return io.save_npz(root / dataset / "eval" / method / f"seed{seed}" / f"step{step:07d}_grid.npz",
                       images=images, labels=labels)


@pytest.fixture()
def runs(tmp_path) -> tuple[Path, list[Path], list[Path]]:
    """mnist: teacher, sfd and pecker at two seeds (curves at steps 0, 200, 400), a variant with one seed."""
    root = tmp_path / "results"
    jsons = [write_result(root, result(method="teacher", ua=0.5, fid=3.0))]
    grids = []
    for method, base_ua in (("sfd", 90.0), ("pecker", 97.0)):
        for seed in (0, 1):
            jsons.append(write_result(root, result(method=method, seed=seed, ua=base_ua + seed, fid=10.0 + 2 * seed)))
            for step in (0, 200, 400):
                jsons.append(write_result(root, result(method=method, seed=seed, step=step, final=False,
                                                       ua=base_ua * step / 400, fid=30.0 - step / 20)))
                grids.append(write_grid(root, "mnist", method, seed, step))
    jsons.append(write_result(root, result(method="pecker_once", ua=95.0, fid=11.0)))
    return root, jsons, grids


def test_table1_mean_interval_and_formats(runs, tmp_path):
    root, jsons, _ = runs
    df = results.load_frame(jsons)
    t1 = tables.build_table1(df)
    assert list(t1["method"]) == ["teacher", "sfd", "pecker", "pecker_once"]
    pk = t1.set_index("method").loc["pecker"]
    assert pk["n_seeds"] == 2 and pk["seeds"] == "0,1"
    assert pk["ua_mean"] == pytest.approx(97.5) and pk["ua_std"] == pytest.approx(np.std([97, 98], ddof=1))
    # 95% t-interval over 2 seeds, by hand: t_{0.975, 1} = 12.7062, s = 0.7071, half = t s / sqrt(2)
    half = 12.706204736 * np.std([97, 98], ddof=1) / np.sqrt(2)
    assert pk["ua_lo"] == pytest.approx(97.5 - half) and pk["ua_hi"] == pytest.approx(97.5 + half)
    assert pk["fid_mean"] == pytest.approx(11.0) and pk["fid_n"] == 2
    assert np.isnan(t1.set_index("method").loc["pecker_once", "ua_std"])
    for key in ("ua", "fid", "is", "precision", "recall", "kid", "retained_accuracy", "steps", "images_seen",
                "wall_clock_s"):
        assert {f"{key}_mean", f"{key}_lo", f"{key}_hi", f"{key}_std", f"{key}_n"} <= set(t1.columns)
    assert "data_free" in t1.columns and bool(pk["data_free"]) is True

    out = tmp_path / "tables"
    written = tables.write_tables(df, out, paper_datasets=Paper().dataset_names)
    assert {p.name for p in written.values()} == {f"{n}.{e}" for n in ("table1", "ablation", "efficiency")
                                                  for e in ("csv", "md", "tex")} | {"efficiency.json"}
    back = pd.read_csv(out / "table1.csv")
    assert back.loc[back["method"] == "pecker", "ua_mean"].item() == pytest.approx(97.5)
    md = (out / "table1.md").read_text()
    assert "## mnist" in md and "97.50 [91.15, 103.85]" in md and "UA (%) ↑" in md and "cross-dataset" in md
    assert "95.00 (1 seed)" in md  # pecker_once: one seed, no interval
    tex = (out / "table1.tex").read_text()
    assert r"\begin{tabular}" in tex and "97.50 [91.15, 103.85]" in tex and r"pecker\_once" in tex
    assert r"UA (\%) $\uparrow$" in tex and "UA (%)" not in tex
    abl = pd.read_csv(out / "ablation.csv")
    assert set(abl["method"]) == {"sfd", "pecker", "pecker_once"}
    assert abl.loc[abl["method"] == "pecker_once", "ua_minus_pecker"].item() == pytest.approx(-2.5)


def test_no_ablation_still_writes_files(runs, tmp_path):
    _, jsons, _ = runs
    df = results.load_frame(jsons)
    df = df[df["method"] != "pecker_once"]
    tables.write_tables(df, tmp_path / "t")
    assert "No ablation runs were configured" in (tmp_path / "t" / "ablation.md").read_text()
    assert pd.read_csv(tmp_path / "t" / "ablation.csv").empty
    written = figures.write_figures(df[df["final"]], results.grid_index([]), "mnist", tmp_path / "f")
    assert sorted(p.name for ps in written.values() for p in ps) == sorted(
        f"{n}_mnist.{e}" for n in ("fig2", "fig3", "ablation") for e in ("png", "pdf"))
    assert all(p.stat().st_size > 0 for ps in written.values() for p in ps)
    again = figures.write_figures(df[df["final"]], results.grid_index([]), "mnist", tmp_path / "g")
    assert [p.read_bytes() for p in again["ablation"]] == [p.read_bytes() for p in written["ablation"]]


def test_cli_tables_and_figures(runs, tmp_path):
    root, jsons, grids = runs
    cli = CliRunner()
    res = cli.invoke(report_cmd, ["tables", "--out-dir", str(tmp_path / "tables"), *map(str, jsons)])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "tables" / "table1.tex").is_file()
    res = cli.invoke(report_cmd, ["tables", "--results-dir", str(root), "--out-dir", str(tmp_path / "found")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "found" / "table1.csv").read_text() == (tmp_path / "tables" / "table1.csv").read_text()
    res = cli.invoke(report_cmd, ["tables", "--out-dir", str(tmp_path / "none")])
    assert res.exit_code != 0 and "no metric JSONs" in res.output
    cfg = REPO / "config" / "config.yaml"
    res = cli.invoke(report_cmd, ["figures", "-c", str(cfg), "-d", "mnist", "--out-dir", str(tmp_path / "figs"),
                                  *map(str, jsons + grids)])
    assert res.exit_code == 0, res.output
    for name in ("fig2_mnist", "fig3_mnist", "ablation_mnist"):
        for ext in ("png", "pdf"):
            f = tmp_path / "figs" / f"{name}.{ext}"
            assert f.is_file() and f.stat().st_size > 1000, f
    assert (tmp_path / "figs" / "fig2_mnist.png").read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "figs" / "fig3_mnist.pdf").read_bytes()[:4] == b"%PDF"


def _audit(tmp_path, jsons, extra_args=()):
    out = tmp_path / "tables"
    df = results.load_frame(jsons)
    tables.write_tables(df, out)
    res = CliRunner().invoke(audit_cmd, ["--table", str(out / "table1.csv"), "--table", str(out / "ablation.csv"),
                                         "--out-md", str(out / "audit.md"), "--out-json", str(out / "audit.json"),
                                         *extra_args, *map(str, jsons)])
    return res, out


def test_audit_cross_dataset_and_substitutes(runs, tmp_path):
    _, jsons, _ = runs
    res, out = _audit(tmp_path, jsons)
    assert res.exit_code == 0, res.output
    report = json.loads((out / "audit.json").read_text())
    assert report["summary"]["missing_provenance"] == 0
    assert "cross-dataset comparison (mnist vs CIFAR-10)" in report["datasets"]["mnist"]
    assert "cross-dataset comparison (mnist vs CIFAR-10)" in res.output
    cells = {c["name"]: c for c in report["cells"]}
    ua = cells["table1 mnist/pecker/ua"]
    assert ua["paper"] == 98.76 and ua["ours"] == pytest.approx(97.5) and ua["diff"] == pytest.approx(-1.26)
    assert ua["cross_dataset"] and "CIFAR-10" in ua["comparison"]
    assert len(ua["provenance"]) == 2 and ua["provenance"][0]["commit"] == "a" * 40
    assert ua["provenance"][0]["samples"] == "500 forget-class samples"
    assert "small_cnn" in ua["provenance"][0]["evaluator"]
    assert any("ResNet-34" in s for s in ua["substitute"])
    assert any("IS" in s or "is_mean" in s for s in cells["table1 mnist/pecker/is"]["substitute"])
    fid = cells["table1 mnist/sfd/fid"]
    assert fid["paper"] == 5.71 and "torch-fidelity 0.4.0" in fid["provenance"][0]["evaluator"]
    assert any("feature extractor nvidia-inception" in n for n in fid["notes"])
    assert any("cross-check clean-fid 0.1.35 (fid.frechet_distance) gives 12.31 (ours 10, difference +2.31)" in n
               for n in fid["notes"]), fid["notes"]
    is_cell = cells["table1 mnist/pecker/is"]
    assert is_cell["provenance"][0]["evaluator"] == \
        "ua-classifier-logits, torch-fidelity 0.4.0 metric_isc.isc_features_to_metric"
    assert cells["table1 mnist/pecker_once/ua"]["paper"] is None
    assert cells["ablation mnist/sfd/ua_minus_pecker"]["paper"] == pytest.approx(93.72 - 98.76)
    md = (out / "audit.md").read_text()
    assert "SUBSTITUTE" in md and "salun-precision-equals-retrain" in md and "sld-medium-i2p" in md


def test_audit_paper_dataset_is_not_cross_dataset(tmp_path):
    root = tmp_path / "results"
    # values that do not survive a short float format: the stale-table check must not fire
    jsons = [write_result(root, result(dataset="cifar10", method=m, seed=seed, ua=100 / 3 + seed / 7, substitutes=[]))
             for m in ("sfd", "pecker") for seed in (0, 1)]
    res, out = _audit(tmp_path, jsons)
    assert res.exit_code == 0, res.output
    report = json.loads((out / "audit.json").read_text())
    cell = next(c for c in report["cells"] if c["name"] == "table1 cifar10/pecker/ua")
    assert not cell["cross_dataset"] and cell["comparison"] == "paper CIFAR-10 / PECKER"
    assert not any("dataset" in s for s in cell["substitute"])
    assert report["summary"]["missing_provenance"] == 0 and "same dataset" in report["datasets"]["cifar10"]


def test_audit_missing_provenance_fails_and_names_cell(runs, tmp_path):
    root, jsons, _ = runs
    bad = result(method="sfd", seed=1, ua=91.0, fid=12.0)
    bad["provenance"]["git"]["commit"] = None
    bad["metric_sources"]["fid"] = copy.deepcopy(FID_SRC) | {"version": None}
    write_result(root, bad)
    res, out = _audit(tmp_path, jsons)
    assert res.exit_code != 0
    assert "table1 mnist/sfd/ua" in res.output and "table1 mnist/sfd/fid" in res.output
    report = json.loads((out / "audit.json").read_text())
    assert "table1 mnist/sfd/ua" in report["missing_cells"]
    assert "table1 mnist/pecker/ua" not in report["missing_cells"]
    fid = next(c for c in report["cells"] if c["name"] == "table1 mnist/sfd/fid")
    assert any("provenance.git.commit" in m for m in fid["missing"])
    assert any("metric_sources.fid.version" in m for m in fid["missing"])
    res, _ = _audit(tmp_path, jsons, ["--allow-missing"])
    assert res.exit_code == 0


def test_evaluator_reads_typed_source_fields():
    rec = result()
    text, missing, _, notes = aud.evaluator_of(rec, "fid")
    assert text == "torch-fidelity 0.4.0, extractor nvidia-inception-2015-12-05-torchscript" and missing == []
    # the fields are read as recorded, not parsed out of a "lib==ver:fn" string
    rec["metric_sources"]["fid"] = {k: v for k, v in FID_SRC.items() if k not in ("library", "version", "function")} | {
        "implementation": "torch-fidelity==0.4.0:fid_statistics_to_metric"}
    text, missing, _, _ = aud.evaluator_of(rec, "fid")
    assert text.startswith("? ?") and missing == ["metric_sources.fid.library", "metric_sources.fid.version",
                                                  "metric_sources.fid.function"]
    rec["metric_sources"]["kid_mean"] = FID_SRC | {"library": "clean-fid", "version": "0.1.35",
                                                   "function": "fid.kernel_distance", "note": "std over per-subset calls"}
    assert aud.evaluator_of(rec, "kid_mean")[0].startswith("clean-fid 0.1.35, extractor")
    rec["metric_sources"]["is_mean"] = {"source": "ua-classifier-logits", "substitute": True}
    text, missing, subst, _ = aud.evaluator_of(rec, "is_mean")
    assert text == "ua-classifier-logits" and missing == [] and subst


def test_audit_flags_stale_table(runs, tmp_path):
    _, jsons, _ = runs
    out = tmp_path / "tables"
    tables.write_tables(results.load_frame(jsons), out)
    t1 = pd.read_csv(out / "table1.csv")
    t1.loc[t1["method"] == "pecker", "ua_mean"] = 50.0
    cells = aud.audit({"table1": t1}, results.load_records(jsons), Paper())["_cells"]
    cell = next(c for c in cells if c.name == "table1 mnist/pecker/ua")
    assert any("stale table" in m for m in cell.missing)


def test_paper_results_yaml():
    data = load_paper()
    paper = Paper(data)
    assert paper.value("cifar10", "pecker", "ua") == 98.76
    assert paper.value("stl10", "sfd_two_stage", "fid") == 26.79
    assert paper.value("cifar10", "salun", "ua") is None
    assert paper.match("mnist", "pecker").cross_dataset
    t3 = data["tables"]["table3"]
    sld = next(r for r in t3["rows"] if r["model"] == "SLD-Medium")
    assert sld["inappropriate_probability"] == 14.10
    assert any("14.97" in a["note"] and "SLD-Medium" in a["note"] for a in t3["anomalies"])
    t2 = {r["model"]: r for r in data["tables"]["table2"]["rows"]}
    assert t2["PECKER"]["brad_pitt"]["gcd"] == 0.41 and t2["PECKER"]["images_seen"] == 100000
    assert {a["id"] for a in paper.anomalies()} >= {"retrain-fid-is", "salun-precision-equals-retrain", "salun-ua-blank"}


def test_grid_loader_accepts_float_nchw(tmp_path):
    p = io.save_npz(tmp_path / "mnist" / "eval" / "sfd" / "seed0" / "step0000002_grid.npz",
                    images=np.zeros((3, 1, 4, 4), np.float32) - 1, labels=np.array([0, 1, 2]))
    img, labels = results.load_grid(p)
    assert img.shape == (3, 4, 4, 1) and img.dtype == np.uint8 and img.max() == 0
    idx = results.grid_index([p])
    assert idx.loc[0, "step"] == 2 and idx.loc[0, "method"] == "sfd"
