import json

import pytest
from click.testing import CliRunner

from pecker.cli import main
from tests.helpers import REPO, tiny_dataset

TEST_CFG = str(REPO / "config" / "test.yaml")


@pytest.mark.parametrize("cmd", [[], ["data"], ["data", "prepare"], ["teacher", "train"], ["teacher", "sample"],
                                 ["classifier", "train"], ["evaluate", "accuracy"], ["config", "show"]])
def test_help(cmd):
    res = CliRunner().invoke(main, cmd + ["--help"])
    assert res.exit_code == 0, res.output
    assert "Usage" in res.output


def test_bad_override_fails_naming_the_key():
    res = CliRunner().invoke(main, ["config", "show", "-c", TEST_CFG, "-d", "mnist-tiny",
                                    "--set", "datasets.mnist-tiny.teacher.lr=-1"])
    assert res.exit_code != 0 and "datasets.mnist-tiny.teacher.lr" in res.output


def test_teacher_train_sample_and_check_by_hand(tmp_path):
    data = tiny_dataset(tmp_path)
    run = CliRunner().invoke
    common = ["-c", TEST_CFG, "-d", "mnist-tiny", "--set", "datasets.mnist-tiny.teacher.steps=2",
              "--set", "datasets.mnist-tiny.teacher.checkpoint_every=1"]
    res = run(main, ["teacher", "train", *common, "--data", str(data), "--out", str(tmp_path / "t")])
    assert res.exit_code == 0, res.output
    res = run(main, ["teacher", "sample", *common, "--teacher", str(tmp_path / "t" / "ema"),
                     "--out", str(tmp_path / "s.npz"), "--grid", str(tmp_path / "s.png"), "--per-class", "2"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "s.png").stat().st_size > 0
    res = run(main, ["classifier", "train", *common, "--data", str(data), "--out", str(tmp_path / "c" / "model")])
    assert res.exit_code == 0, res.output
    res = run(main, ["evaluate", "accuracy", *common, "--classifier", str(tmp_path / "c" / "model"),
                     "--samples", str(tmp_path / "s.npz"), "--out", str(tmp_path / "acc.json")])
    assert res.exit_code == 0, res.output
    acc = json.loads((tmp_path / "acc.json").read_text())
    assert acc["n"] == 20 and 0.0 <= acc["accuracy"] <= 1.0
    assert acc["classifier"]["substitute"] is True and acc["provenance"]["git"]["commit"]
