"""End to end: the whole DAG of config/test.yaml through Snakemake, in a scratch directory."""

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.helpers import REPO, snakemake


@pytest.mark.slow
def test_test_config_runs_end_to_end(tmp_path):
    snakemake(tmp_path)
    res = tmp_path / "results" / "mnist-tiny"
    acc = json.loads((res / "teacher" / "sample_accuracy.json").read_text())
    assert acc["n"] == 40 and acc["provenance"]["config_hash"]
    for rule in ("prepare_data", "train_teacher", "sample_teacher", "train_classifier", "check_teacher"):
        assert (tmp_path / "results" / "benchmarks" / "mnist-tiny" / f"{rule}.tsv").exists(), rule
        assert (tmp_path / "results" / "logs" / "mnist-tiny" / f"{rule}.log").exists(), rule
    # every checkpoint of every run was evaluated, with the training wall-clock for the curves
    for method in ("sfd", "pecker"):
        steps = sorted((res / "eval" / method / "seed0").glob("step*.json"))
        assert len(steps) >= 2, method
        for path in steps:
            rec = json.loads(path.read_text())
            assert rec["training"]["wall_clock_s"] is not None, path
            assert rec["provenance"]["git"] and rec["checkpoint"]["sha256"], path
    # the paper's artefacts and the audit
    out = tmp_path / "results"
    for name in ("tables/table1.csv", "tables/table1.md", "tables/table1.tex", "tables/audit.md",
                 "figures/fig2_mnist-tiny.png", "figures/fig3_mnist-tiny.pdf"):
        assert (out / name).stat().st_size > 0, name
    table = (out / "tables" / "table1.csv").read_text()
    rows = {line.split(",")[1] for line in table.splitlines()[1:]}
    assert rows == {"teacher", "retrain", "sa", "salun", "sfd", "sfd_stage1", "sfd_two_stage", "pecker"}, table
    # the baselines: multi-step models, sampled as the teacher is, with their data-free flag
    for method, free in (("retrain", False), ("sa", True), ("salun", False), ("sfd_two_stage", True)):
        rec = json.loads((res / "eval" / method / "seed0" / "final.json").read_text())
        assert rec["data_free"] is free and rec["kind"] == ("generator" if method == "sfd_two_stage" else "diffusion")
        assert rec["provenance"]["git"] and rec["checkpoint"]["sha256"], method
    # the baselines are Table 1 rows, not ablation variants of PECKER
    assert "No ablation runs" in (out / "tables" / "ablation.md").read_text()
    audit = json.loads((out / "tables" / "audit.json").read_text())
    assert audit["cells"] and not audit["summary"]["missing_provenance"], audit["summary"]
    check_concept_half(out)
    assert {"table1", "table2", "table3"} <= {c["table"] for c in audit["cells"]}
    check_recorded_hashes(tmp_path)
    # a second run has nothing to do, and the HTML report builds from what is there
    dry = snakemake(tmp_path, "-n")
    assert "Nothing to be done" in dry.stdout + dry.stderr
    snakemake(tmp_path, "--report", str(out / "report.html"))
    assert "table1" in (out / "report.html").read_text(errors="replace")


def check_concept_half(out: Path) -> None:
    """The text dataset of config/test.yaml: its teacher, SLD, SFD and PECKER evaluations on both tasks,
    Tables 2-3 and Figs 4-6, with their substitutes recorded."""
    res = out / "fashion-tiny" / "eval"
    teacher = json.loads((res / "teacher" / "seed0" / "final.json").read_text())
    assert set(teacher["metrics"]) == {"sneaker", "nudity"} and teacher["retain"]["n"] > 0
    assert any("Stable Diffusion" in s for s in teacher["substitutes"])
    assert teacher["detectors"]["nudenet"]["sha256"]
    sld = json.loads((res / "sld" / "seed0" / "final.json").read_text())
    assert sld["kind"] == "sld" and sld["method"] == "sld"
    assert set(sld["sld"]) == {"sneaker", "nudity"} and sld["sld"]["sneaker"]["safety_concept"] == "a sneaker"
    assert all(v["sld_warmup_steps"] < 2 for v in sld["sld"].values())  # engages within test.yaml's 2 DDIM steps
    for method, task in (("sfd_sneaker", "sneaker"), ("pecker_sneaker", "sneaker"), ("sfd_nudity", "nudity"),
                         ("pecker_nudity", "nudity")):
        rec = json.loads((res / method / "seed0" / "final.json").read_text())
        assert list(rec["metrics"]) == [task] and rec["images_seen"] == 4 * 2  # retain batch only
        assert len(list((res / method / "seed0").glob("step*_grid.npz"))) == 3
    sa = json.loads((res / "sa_sneaker" / "seed0" / "final.json").read_text())  # SA's text recipe
    assert sa["kind"] == "diffusion" and sa["data_free"] is True and list(sa["metrics"]) == ["sneaker"]
    t2 = (out / "tables" / "table2.md").read_text()
    t3 = (out / "tables" / "table3.md").read_text()
    assert "SLD-Medium" in t2 and "PECKER" in t2 and "SFD" in t3
    assert any(line.split("|")[1].strip() == "SA" for line in t2.splitlines() if line.count("|") > 3), t2
    for name in ("tables/table2.csv", "tables/table3.tex", "figures/fig4_fashion-tiny.png",
                 "figures/fig5_fashion-tiny.pdf", "figures/fig6_fashion-tiny.png"):
        assert (out / name).stat().st_size > 0, name


def check_recorded_hashes(workdir: Path) -> None:
    """`pecker config hash --stage S` prints exactly the config_hash every result of stage S records."""
    from click.testing import CliRunner

    from pecker.cli import main

    res = workdir / "results" / "mnist-tiny"
    (resolved,) = (res / "configs").glob("*.yaml")  # one config, one content-addressed file

    def printed(stage, *extra):
        out = CliRunner().invoke(main, ["config", "hash", "--config", str(resolved), "-d", "mnist-tiny",
                                        "--stage", stage, *extra])
        assert out.exit_code == 0, out.output
        return out.output.strip()

    def load(path):
        return json.loads(path.read_text())

    recorded = {
        "data": [load(workdir / "data" / "mnist-tiny" / "meta.json")["config_hash"]],
        "teacher": [load(res / "teacher" / n)[k] for n in ("ema.json", "model.json") for k in ("config_hash",)]
        + [load(res / "teacher" / "ema.json")["provenance"]["config_hash"]],
        "sample": [load(res / "teacher" / "samples.json")["provenance"]["config_hash"]],
        "classifier": [load(res / "classifier" / "model.json")["config_hash"]],
        "accuracy": [load(res / "teacher" / "sample_accuracy.json")["provenance"]["config_hash"]],
        "reference": [load(res / "eval" / "reference.json")["config_hash"]],
        "evaluate": [load(p)["provenance"]["config_hash"] for p in sorted((res / "eval").glob("*/seed*/*.json"))],
    }
    for stage, values in recorded.items():
        assert values and set(values) == {printed(stage)}, (stage, values)
    for method in ("retrain", "sa", "salun"):
        run = res / "unlearn" / method / "seed0"
        values = [load(run / "unet.json")["config_hash"]] + [load(p)["config_hash"] for p in (run / "ckpt").glob("step*/*.json")]
        assert len(values) > 1 and set(values) == {printed("unlearn", "--method", method, "--seed", "0")}, method
    for method in ("sfd", "pecker", "sfd_two_stage"):
        run = res / "unlearn" / method / "seed0"
        values = [load(run / "generator_ema.json")["config_hash"]]
        values += [load(p)["config_hash"] for p in sorted((run / "ckpt").glob("step*/*.json"))]
        assert len(values) > 3 and set(values) == {printed("unlearn", "--method", method, "--seed", "0")}, method


@pytest.mark.parametrize("overlay, key", [
    ("device: tpu", "config key 'device'"),
    # JSON schema alone takes 2.0 for an integer; the parse used to crash on it with a traceback
    ("datasets: {mnist-tiny: {unlearn: {checkpoint_every: 2.0}}}", "'datasets.mnist-tiny.unlearn.checkpoint_every': 2.0"),
    ("datasets: {mnist-tiny: {unlearn: {t_init: 1000}}}", "unlearn.t_init"),
    ("datasets: {mnist-tiny: {teacher: {sample: {steps: 2000}}}}", "teacher.sample.steps"),
    ("datasets: {mnist-tiny: {unlearn: {methods: {sfd: {stage2_teacher: fake_score}}}}}", "methods.sfd.stage2_teacher"),
    ("report: {reference_method: nosuch}", "report.reference_method"),
])
def test_bad_config_fails_before_any_job(tmp_path, overlay, key):
    extra = tmp_path / "overlay.yaml"
    extra.write_text(overlay + "\n")
    res = snakemake(tmp_path, "-n", "--configfile", str(REPO / "config" / "test.yaml"), str(extra), check=False)
    assert res.returncode != 0
    assert key in res.stdout + res.stderr
    assert "Traceback" not in res.stdout + res.stderr
    assert not (tmp_path / "results").exists()


@pytest.mark.parametrize("cfg", ["cifar10.yaml", "stl10.yaml"])
def test_paper_configs_dry_run(tmp_path, cfg):
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    res = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(tmp_path),
                          "--configfile", str(REPO / "config" / cfg), "-n", "--cores", "8"],
                         capture_output=True, text=True, env=env, timeout=600)
    assert res.returncode == 0, res.stderr[-4000:]
    assert "train_teacher" in res.stdout and "train_classifier" in res.stdout
    # Table 1: every baseline is a job with its evaluation (SFD-Two-Stage in the STL-10 config)
    methods = {"retrain", "sa", "salun", "sfd", "pecker"} | ({"sfd_stage1", "sfd_two_stage"} if cfg == "stl10.yaml" else set())
    for m in methods:
        assert f"method={m}, seed=0" in res.stdout, m
    assert "rule unlearn_baseline:" in res.stdout and "rule evaluate_baseline:" in res.stdout


def test_ablation_overlay_adds_one_run_per_variant_and_seed():
    from pecker import config as C
    from pecker import workflow as pwf

    base = C.resolve([REPO / "config" / "config.yaml"])
    overlay = C.resolve([REPO / "config" / "config.yaml", REPO / "config" / "ablation.yaml"])
    runs = lambda cfg, kinds=None: [r for r in pwf.configured_runs(cfg, kinds) if r[0] == "mnist"]  # noqa: E731
    seeds = len(base["datasets"]["mnist"]["unlearn"]["seeds"])
    # six variants per seed on mnist only, all SFD-loop runs; the other datasets are untouched
    assert len(runs(overlay)) - len(runs(base)) == 6 * seeds
    assert len(runs(overlay, ("sfd",))) - len(runs(base, ("sfd",))) == 6 * seeds
    assert [r for r in pwf.configured_runs(overlay) if r[0] != "mnist"] == \
        [r for r in pwf.configured_runs(base) if r[0] != "mnist"]

    def dry_run_counts(*configs):
        env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
        with tempfile.TemporaryDirectory() as d:
            res = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", d,
                                  "--configfile", *map(str, configs), "-n", "--cores", "2"],
                                 capture_output=True, text=True, env=env, timeout=600)
        assert res.returncode == 0, res.stderr[-4000:]
        return {ln.split()[0]: int(ln.split()[1]) for ln in res.stdout.splitlines()
                if len(ln.split()) == 2 and ln.split()[1].isdigit()}

    before = dry_run_counts(REPO / "config" / "config.yaml")
    after = dry_run_counts(REPO / "config" / "config.yaml", REPO / "config" / "ablation.yaml")
    for rule in ("unlearn", "evaluate_final"):
        assert after[rule] - before[rule] == 6 * seeds, (rule, before, after)
