"""Reliability of the run folders (issue: reliability): a diverged run never writes or resumes a
non-finite state, a corrupt newest state falls back to the one before it, and identical runs write
identical states (every global RNG seeded)."""

from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner

from pecker import config as C
from pecker import io
from pecker.cli import main
from pecker.diffusion.unet import build_unet, save_unet
from pecker.runs import NonFiniteState, RunFolder, nonfinite

DS = "mnist-tiny"
TEST_YAML = str(C.REPO_ROOT / "config" / "test.yaml")
OVR = [f"datasets.{DS}.unet.base_channels=8", f"datasets.{DS}.unet.norm_num_groups=4",
       f"datasets.{DS}.unlearn.steps=4", f"datasets.{DS}.unlearn.checkpoint_every=2"]


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    ds = C.resolve([TEST_YAML], OVR)["datasets"][DS]
    torch.manual_seed(0)
    prefix = tmp_path_factory.mktemp("teacher") / "ema"
    save_unet(prefix, build_unet(ds["unet"], ds["data"]), {"kind": "teacher"})
    return prefix


def test_nonfinite_state_is_refused_and_nothing_is_written(tmp_path):
    run = RunFolder(tmp_path, "h", "test run", hint="lower config key 'x.lr'")
    with pytest.raises(NonFiniteState, match=r"step 3 in w.*lower config key 'x.lr'"):
        run.save_state(3, {"w": torch.tensor([1.0, float("nan")]), "n": torch.tensor([1])}, {})
    assert not (tmp_path / "ckpt").exists()
    assert nonfinite({"a": torch.tensor([float("inf")]), "b": torch.ones(2), "i": torch.tensor([3])}) == ["a"]


def test_resume_skips_a_corrupt_or_nonfinite_newest_state(tmp_path):
    run = RunFolder(tmp_path, "h", "test run")
    for step in (2, 4):
        run.save_state(step, {"w": torch.full((3,), float(step))}, {})
    # the newest state's tensors are bit-flipped: checksum mismatch, fall back to step 2
    st = run.step_dir(4) / "state.safetensors"
    raw = bytearray(st.read_bytes())
    raw[-1] ^= 0xFF
    st.write_bytes(bytes(raw))
    tensors, meta, prev = run.resume(10)
    assert meta["step"] == 2 and float(tensors["w"][0]) == 2.0
    # a non-finite state written behind the guard's back is skipped as well
    io.save_checkpoint(run.step_dir(6) / "state", {"w": torch.full((3,), float("nan"))},
                       {"step": 6, "config_hash": "h"})
    assert run.resume(10)[1]["step"] == 2


def test_a_diverged_run_stops_cleanly_and_never_resumes_from_its_divergence(teacher, tmp_path):
    out = tmp_path / "run"
    args = ["unlearn", "--config", TEST_YAML, *[a for o in OVR for a in ("--set", o)],
            "--set", f"datasets.{DS}.unlearn.methods.sfd.lr_theta=1.0e+30",
            "--set", f"datasets.{DS}.unlearn.methods.sfd.lr_psi=1.0e+30",
            "-d", DS, "--method", "sfd", "--seed", "0", "--teacher", str(teacher), "--out", str(out)]
    for _ in range(2):  # the rerun starts again from the last finite state and fails the same way
        res = CliRunner().invoke(main, args)
        assert res.exit_code == 1, res.output
        assert "Traceback" not in res.output and ("non-finite" in res.output or "diverged" in res.output), res.output
        assert "lr_theta" in res.output
        for side in (out / "ckpt").glob("step*/*.json"):
            tensors, _ = io.load_checkpoint(side.with_suffix(""))
            assert not nonfinite(tensors), side
    assert not (out / "generator_ema.json").exists()


def test_identical_runs_write_identical_states(teacher, tmp_path):
    """numpy and python RNGs are seeded too: their saved states are equal, not only the weights."""
    shas = []
    for name in ("a", "b"):
        args = ["unlearn", "--config", TEST_YAML, *[a for o in OVR for a in ("--set", o)], "-d", DS,
                "--method", "pecker", "--seed", "1", "--teacher", str(teacher), "--out", str(tmp_path / name),
                "--max-steps", "2"]
        res = CliRunner().invoke(main, args)
        assert res.exit_code == 0, res.output
        shas.append(io.read_json(tmp_path / name / "ckpt" / "step0000002" / "state.json")["sha256"])
    assert shas[0] == shas[1]


@pytest.mark.parametrize("value", [".nan", ".inf", "-.inf"])
def test_nonfinite_numbers_are_config_errors(value):
    with pytest.raises(C.ConfigError, match=rf"config key 'datasets.{DS}.unlearn.lr_theta': (must be a finite number|-inf is less than)"):
        C.resolve([TEST_YAML], [f"datasets.{DS}.unlearn.lr_theta={value}"])


# Each malformed config fails in validation (before any job), naming the key.
MALFORMED = [
    ("unlearn.t_init=1000", "unlearn.t_init"),
    ("unlearn.t_max=1500", "unlearn.t_max"),
    ("unlearn.methods.pecker.mask.t_max=2000", "unlearn.mask.t_max"),
    ("unlearn.t_min=800", "unlearn.t_min"),
    ("unet.norm_num_groups=6", "unet.norm_num_groups"),
    ("unlearn.checkpoint_every=2.0", "unlearn.checkpoint_every"),
    ("teacher.steps=30.0", "teacher.steps"),
    ("diffusion.beta_end=1.5", "diffusion.beta_end"),
    ("diffusion.beta_start=0.05", "diffusion.beta_end"),
    ("evaluate.is_source=inception", "evaluate.is_source"),
    ("unlearn.cover_class=0", "unlearn.cover_class"),
    ("unlearn.forget_class=10", "unlearn.forget_class"),
    ("teacher.lr=.nan", "teacher.lr"),
    ("unlearn.methods.sa.fisher.timesteps=0", "fisher.timesteps"),
    ("unlearn.methods.sfd_two_stage.init_from=sa", "init_from"),
]


@pytest.mark.parametrize("override, key", MALFORMED)
def test_malformed_configs_fail_validation_naming_the_key(override, key):
    with pytest.raises(C.ConfigError, match=key.replace(".", r"\.")):
        C.resolve([TEST_YAML], [f"datasets.{DS}.{override}"])
