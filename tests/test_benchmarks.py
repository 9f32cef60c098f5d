"""The benchmark scripts run and print what they claim (their figures are measured elsewhere: README)."""

from __future__ import annotations

import json
import math
import subprocess
import sys

from pecker.config import REPO_ROOT


def test_sd_step_runs_the_sd_form_loop_with_bfloat16_and_checkpointing(tmp_path):
    """benchmarks/sd_step.py on the CPU layout (sd-small: SD v1.x blocks at 1/10 width, 77 x 768 text
    states), PECKER under bfloat16 autocast, with and without gradient checkpointing."""
    out = tmp_path / "sd.json"
    proc = subprocess.run([sys.executable, "benchmarks/sd_step.py", "--batches", "1", "--iters", "1", "--warmup", "0",
                           "--threads", "1", "--variants", "pecker", "--autocast", "bfloat16", "--json", str(out)],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads(out.read_text())
    assert [(r["network"], r["batch"], r["checkpointing"], r["autocast"]) for r in rows] == [
        ("sd-small", 1, False, "bfloat16"), ("sd-small", 1, True, "bfloat16")]
    assert all(math.isfinite(r["sec_per_iter"]) and r["sec_per_iter"] > 0 and r["sec_mask_refresh"] > 0 for r in rows)
    assert 10e6 < rows[0]["params"] < 11e6
    assert "network sd-small" in proc.stdout and "batch  ckpt" in proc.stdout


def test_stages_times_the_concept_half_on_a_text_dataset(tmp_path):
    """benchmarks/stages.py on the tiny text dataset: the text teacher, the concept evaluation, the
    SD form of SFD / PECKER and the ESD / SA iterations, each next to its bound (data and classifier
    added as prerequisites; ESD through a --set method, as the tiny config has none)."""
    out = tmp_path / "stages.json"
    esd = "{kind: esd, task: sneaker, train: xattn, steps: 2, ddim_steps: 2}"
    proc = subprocess.run([sys.executable, "benchmarks/stages.py", "--config", "config/test.yaml", "--dataset",
                           "fashion-tiny", "--stages", "teacher", "evaluate", "unlearn_sfd", "unlearn_pecker",
                           "unlearn_esd", "unlearn_sa", "--set", f"datasets.fashion-tiny.unlearn.methods.esd_x={esd}",
                           "--reps", "1", "--teacher-steps", "6", "--threads", "1", "--json", str(out)],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = {r["stage"]: r for r in json.loads(out.read_text())}
    assert list(rows) == ["data", "teacher", "classifier", "evaluate", "unlearn_sfd", "unlearn_pecker",
                          "unlearn_esd", "unlearn_sa"]
    for st in list(rows)[1:]:
        r = rows[st]
        assert r["measured_s"] > 0 and r["bound_s"] > 0 and math.isfinite(r["ratio"]), st
    assert "sfd_sneaker" in rows["unlearn_sfd"]["note"] and "pecker_sneaker" in rows["unlearn_pecker"]["note"]
    assert rows["unlearn_esd"]["note"].startswith("esd_x,") and rows["unlearn_sa"]["note"].startswith("sa_sneaker,")
    teacher = rows["teacher"]
    assert set(teacher["parts_s"]) == {"draw", "clip", "ema"} and all(v > 0 for v in teacher["parts_s"].values())
    parts = sum(teacher["parts_s"].values())
    assert math.isclose(teacher["rest_s"], teacher["measured_s"] - teacher["bound_s"] - parts)
    assert "loop extras ms: draw" in teacher["note"]
    assert "retained-prompt images" in rows["evaluate"]["note"]
    assert "dataset fashion-tiny" in proc.stdout


def test_stages_times_the_class_baselines(tmp_path):
    """The class half's baseline iterations (SA, SalUn) through run_baseline's own objectives, and the
    default stage list of each kind of dataset (a baseline stage only where its kind is configured)."""
    out = tmp_path / "stages.json"
    proc = subprocess.run([sys.executable, "benchmarks/stages.py", "--config", "config/test.yaml", "--dataset",
                           "mnist-tiny", "--stages", "unlearn_sa", "unlearn_salun", "--reps", "1", "--threads", "1",
                           "--json", str(out)], cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = {r["stage"]: r for r in json.loads(out.read_text())}
    assert list(rows) == ["data", "unlearn_sa", "unlearn_salun"]
    for st in ("unlearn_sa", "unlearn_salun"):
        assert rows[st]["measured_s"] > 0 and rows[st]["bound_s"] > 0, st
    assert rows["unlearn_sa"]["note"].startswith("sa,") and rows["unlearn_salun"]["note"].startswith("salun,")

    sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
    try:
        from stages import default_stages
    finally:
        sys.path.remove(str(REPO_ROOT / "benchmarks"))
    from pecker import config as C

    cfg = C.resolve([REPO_ROOT / "config" / "config.yaml"])
    assert default_stages(cfg["datasets"]["mnist"])[-3:] == ["unlearn_pecker", "unlearn_sa", "unlearn_salun"]
    assert "sample_teacher" in default_stages(cfg["datasets"]["mnist"])
    text = default_stages(cfg["datasets"]["fashion"])
    assert "sample_teacher" not in text and text[-3:] == ["unlearn_pecker", "unlearn_sa", "unlearn_esd"]


def test_stages_times_a_fresh_teacher_run_in_a_reused_scratch_folder(tmp_path):
    """The teacher stage trains anew when --scratch already holds a finished run (it would otherwise be
    resumed at its last step and its old log reported)."""
    cmd = [sys.executable, "benchmarks/stages.py", "--config", "config/test.yaml", "--dataset", "mnist-tiny",
           "--stages", "teacher", "--reps", "1", "--teacher-steps", "3", "--threads", "1", "--scratch", str(tmp_path)]
    log = tmp_path / "teacher" / "log.csv"
    written = []
    for _ in range(2):
        proc = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        written.append(log.stat().st_mtime_ns)
    assert written[1] > written[0]


def test_schedule_runs_each_setting_in_a_clean_clone(tmp_path):
    """benchmarks/schedule.py: each thread setting runs Snakemake in its own clone of HEAD (config paths
    relative to the repository), with the clone's package, and records the commit it measured."""
    out = tmp_path / "schedule.json"
    proc = subprocess.run([sys.executable, "benchmarks/schedule.py", "--targets", "data/mnist-tiny/train.npz",
                           "--keep", str(tmp_path / "work"), "--json", str(out)],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads(out.read_text())
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True).stdout.strip()
    assert [(r["setting"], r["n_jobs"], r["commit"]) for r in rows] == [("new", 1, head), ("old", 1, head)]
    assert "train_teacher=2" in rows[1]["threads"] and "train_teacher=1" in rows[0]["threads"]
    metas = sorted((tmp_path / "work").glob("pecker-schedule-*/pecker/data/mnist-tiny/meta.json"))
    assert len(metas) == 2
    for meta in metas:  # the clone's own code ran: its checkout's commit, not dirty
        assert json.loads(meta.read_text())["provenance"]["git"] == {"commit": head, "dirty": False}
