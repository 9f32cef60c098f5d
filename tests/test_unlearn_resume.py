"""Checkpoints, exact resumption, the config-hash guard and the ``pecker unlearn`` command."""

from __future__ import annotations

import csv

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from pecker import config as C
from pecker import io
from pecker.cli import main
from pecker.runs import ResumeRefused
from pecker.diffusion.unet import build_unet, save_unet
from pecker.unlearn.generator import load_generator
from pecker.unlearn.trainer import list_checkpoints, run_unlearning

DS = "mnist-tiny"
TEST_YAML = str(C.REPO_ROOT / "config" / "test.yaml")
OVR = [
    f"datasets.{DS}.unet.base_channels=8", f"datasets.{DS}.unet.norm_num_groups=4",
    f"datasets.{DS}.unlearn.steps=4", f"datasets.{DS}.unlearn.checkpoint_every=2",
    f"datasets.{DS}.unlearn.keep_states=1",
    # a variant whose mask is not recomputed every step: the saved mask must survive a resume
    f"datasets.{DS}.unlearn.methods.pecker_k="
    "{lam_psi: 1, mu_psi: 1, lam_theta: 1, mu_theta: 1, mask: {enabled: true, refresh: every_k, refresh_every: 3}}",
]


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    cfg = C.resolve([TEST_YAML], OVR)
    ds = cfg["datasets"][DS]
    torch.manual_seed(0)
    prefix = tmp_path_factory.mktemp("teacher") / "ema"
    save_unet(prefix, build_unet(ds["unet"], ds["data"]), {"kind": "teacher"})
    return prefix


def rows(path):
    with open(path, newline="") as fh:
        return [{k: v for k, v in r.items() if k != "step_time_s"} for r in csv.DictReader(fh)]


def test_resume_is_bit_identical_and_checkpoints_are_kept(teacher, tmp_path):
    cfg = C.resolve([TEST_YAML], OVR)
    full, part = tmp_path / "full", tmp_path / "part"
    meta = run_unlearning(cfg, DS, "pecker_k", 3, teacher, full)

    # interrupted after step 3 (newest state: step 2; log row 3 must be dropped), through the CLI
    args = ["unlearn", "--config", TEST_YAML, *[a for o in OVR for a in ("--set", o)], "-d", DS,
            "--method", "pecker_k", "--seed", "3", "--teacher", str(teacher), "--out", str(part)]
    res = CliRunner().invoke(main, [*args, "--max-steps", "3"])
    assert res.exit_code == 0, res.output
    assert not (part / "generator_ema.json").exists()
    assert len(rows(part / "ckpt" / "log.csv")) == 3
    res = CliRunner().invoke(main, [*args, "--log", str(tmp_path / "run.log")])
    assert res.exit_code == 0, res.output
    assert "resumed from" in (tmp_path / "run.log").read_text()

    a = load_file(str(full / "generator_ema.safetensors"))
    b = load_file(str(part / "generator_ema.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    sa = load_file(str(full / "ckpt" / "step0000004" / "state.safetensors"))
    sb = load_file(str(part / "ckpt" / "step0000004" / "state.safetensors"))
    assert sa.keys() == sb.keys() and any(k.startswith("mask.") for k in sa)
    assert all(torch.equal(sa[k], sb[k]) for k in sa if not k.startswith("rng.cuda"))
    assert rows(full / "log.csv") == rows(part / "log.csv")
    assert [r["step"] for r in rows(full / "log.csv")] == ["1", "2", "3", "4"]
    assert [r["mask_refreshed"] for r in rows(full / "log.csv")] == ["1", "0", "0", "1"]

    # sidecar, kept checkpoints (generator_ema at every checkpoint, step 0 = the teacher)
    assert meta["kind"] == "one_step_generator" and meta["t_init"] == 440 and meta["method"] == "pecker_k"
    assert meta["seed"] == 3 and meta["steps"] == 4 and meta["images_seen"] == 4 * (4 + 4)
    for key in ("config_hash", "wall_clock_s", "peak_memory", "provenance"):
        assert key in meta
    ckpts = list_checkpoints(full)
    assert [s for s, _ in ckpts] == [0, 2, 4]
    walls = [load_generator(path)[1]["wall_clock_s"] for _, path in ckpts]
    assert 0 <= walls[0] <= walls[1] <= walls[2] <= meta["wall_clock_s"], walls
    g0, m0 = load_generator(ckpts[0][1])
    t = load_file(str(teacher) + ".safetensors")
    assert m0["step"] == 0 and all(torch.equal(v, t[k]) for k, v in g0.unet.state_dict().items())
    assert sorted(p.parent.name for p in (full / "ckpt").glob("step*/state.json")) == ["step0000004"]


def test_changed_config_is_refused_without_overwriting(teacher, tmp_path):
    cfg = C.resolve([TEST_YAML], OVR)
    out = tmp_path / "run"
    run_unlearning(cfg, DS, "sfd", 0, teacher, out, max_steps=2)
    state = out / "ckpt" / "step0000002" / "state.safetensors"
    digest = io.sha256_file(state)
    changed = C.resolve([TEST_YAML], [*OVR, f"datasets.{DS}.unlearn.xi=1.0"])
    with pytest.raises(ResumeRefused, match="refusing to resume"):
        run_unlearning(changed, DS, "sfd", 0, teacher, out)
    assert io.sha256_file(state) == digest and not (out / "generator_ema.json").exists()
    # a longer run (steps is bookkeeping, not part of the hash) resumes
    longer = C.resolve([TEST_YAML], [*OVR, f"datasets.{DS}.unlearn.steps=3"])
    assert run_unlearning(longer, DS, "sfd", 0, teacher, out)["steps"] == 3


def test_cli_unknown_method_names_the_key(teacher, tmp_path):
    res = CliRunner().invoke(main, ["unlearn", "--config", TEST_YAML, "-d", DS, "--method", "nope", "--seed", "0",
                                    "--teacher", str(teacher), "--out", str(tmp_path / "x")])
    assert res.exit_code != 0 and f"datasets.{DS}.unlearn.methods.nope" in res.output
