"""The run-folder helper (pecker.runs) and the one refusal both training CLIs give."""

from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner

from pecker import config as C
from pecker import io
from pecker.cli import main
from pecker.diffusion.unet import build_unet, save_unet
from pecker.runs import ResumeRefused, RunFolder
from tests.helpers import REPO, tiny_dataset

DS = "mnist-tiny"
TEST_YAML = str(REPO / "config" / "test.yaml")
TINY = [f"datasets.{DS}.unet.base_channels=8", f"datasets.{DS}.unet.norm_num_groups=4"]


def sets(overrides):
    return [a for o in overrides for a in ("--set", o)]


def test_states_resume_prune_and_refuse(tmp_path):
    run = RunFolder(tmp_path / "r", "abc", "toy", keep=2)
    assert run.latest_state() is None and run.resume(10) is None
    for step in (1, 2, 3):
        run.save_state(step, {"w": torch.full((2,), float(step))}, {"teacher_sha256": "t1"})
    assert [p.parent.name for p in (tmp_path / "r" / "ckpt").glob("step*/state.json")] != []
    assert sorted(p.parent.name for p in (tmp_path / "r" / "ckpt").glob("step*/state.json")) == [
        "step0000002", "step0000003"]
    tensors, meta, prev = run.resume(10, expect={"teacher_sha256": "t1"})
    assert meta["step"] == 3 and meta["config_hash"] == "abc" and torch.equal(tensors["w"], torch.full((2,), 3.0))
    # a state whose sidecar is missing is not complete: the previous one is the newest
    (prev.with_suffix(".json")).unlink()
    assert run.resume(10)[1]["step"] == 2
    with pytest.raises(ResumeRefused, match=r"config hash abc in the state, xyz now.*nothing was overwritten"):
        RunFolder(tmp_path / "r", "xyz", "toy").resume(10)
    with pytest.raises(ResumeRefused, match="teacher_sha256 t1 in the state, t2 now"):
        run.resume(10, expect={"teacher_sha256": "t2"})
    with pytest.raises(ResumeRefused, match="beyond the configured 1 steps"):
        run.resume(1)


def test_log_keeps_rows_up_to_the_resumed_step(tmp_path):
    run = RunFolder(tmp_path, "h", "toy")
    with run.open_log(["step", "loss"], 0) as log:
        for step in (1, 2, 3):
            log.write({"step": step, "loss": 0.5 / step})
    with run.open_log(["step", "loss"], 2) as log:
        assert log.rows == 2
        log.write({"step": 3, "loss": 9.0})
    run.finish_log()
    assert (tmp_path / "log.csv").read_text().splitlines() == ["step,loss", "1,0.5", "2,0.25", "3,9"]


def refused_without_overwrite(args, first, changed, state, final):
    """Run ``args + first`` (stopping early), then ``args + changed``: the second must be refused with
    the one clean message, leaving the state and the missing final output as they were."""
    res = CliRunner().invoke(main, [*args, *first])
    assert res.exit_code == 0, res.output
    digest = io.sha256_file(state)
    res = CliRunner().invoke(main, [*args, *changed])
    assert res.exit_code == 1, res.output
    assert "Traceback" not in res.output and (res.exception is None or isinstance(res.exception, SystemExit))
    assert "refusing to resume from" in res.output and "nothing was overwritten" in res.output
    assert str(state.parent) in res.output
    assert io.sha256_file(state) == digest and not final.exists()
    return res.output


def test_both_training_clis_refuse_a_changed_config_the_same_way(tmp_path):
    data = tiny_dataset(tmp_path, res=8)
    base = [*TINY, f"datasets.{DS}.teacher.checkpoint_every=1"]
    args = ["teacher", "train", "--config", TEST_YAML, "-d", DS, "--data", str(data), "--out", str(tmp_path / "t")]
    refused_without_overwrite(args, [*sets(base), "--max-steps", "1"], sets([*base, f"datasets.{DS}.teacher.lr=0.5"]),
                              tmp_path / "t" / "ckpt" / "step0000001" / "state.safetensors", tmp_path / "t" / "ema.json")

    cfg = C.resolve([TEST_YAML], TINY)
    ds = cfg["datasets"][DS]
    torch.manual_seed(0)
    teacher = tmp_path / "teacher" / "ema"
    save_unet(teacher, build_unet(ds["unet"], ds["data"]), {"kind": "teacher"})
    args = ["unlearn", "--config", TEST_YAML, "-d", DS, "--method", "sfd", "--seed", "0",
            "--teacher", str(teacher), "--out", str(tmp_path / "u")]
    state, final = tmp_path / "u" / "ckpt" / "step0000002" / "state.safetensors", tmp_path / "u" / "generator_ema.json"
    refused_without_overwrite(args, [*sets(TINY), "--max-steps", "2"], sets([*TINY, f"datasets.{DS}.unlearn.xi=1.0"]),
                              state, final)
    # another teacher file: refused too, naming the teacher's sha256
    torch.manual_seed(1)
    save_unet(teacher, build_unet(ds["unet"], ds["data"]), {"kind": "teacher"})
    res = CliRunner().invoke(main, [*args, *sets(TINY)])
    assert res.exit_code == 1 and "teacher_sha256" in res.output and "refusing to resume" in res.output
    assert not final.exists()
