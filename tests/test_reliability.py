"""Reliability of the run folders (issue: reliability): a diverged run never writes or resumes a
non-finite state, a corrupt newest state falls back to the one before it, and identical runs write
identical states (every global RNG seeded)."""

from __future__ import annotations

import json

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
    ("unlearn.methods.sfd_two_stage.init_from=sfd_two_stage", "init_from"),
    ("unlearn.methods.sfd_two_stage.init_from=nosuch", "init_from"),
    ("unlearn.methods.sfd.stage2_teacher=fake_score", "methods.sfd.stage2_teacher"),
    ("unlearn.methods.pecker.mask.t_max=1", "methods.pecker.mask.t_min"),
    ("unlearn.methods.pecker.mask.ratio=0", "mask.ratio"),
    ("unlearn.seeds=[0,0]", "unlearn.seeds"),
    ("data.resolution=9", "data.resolution"),
    ("unet.attention_resolutions=[3]", "unet.attention_resolutions"),
    ("teacher.sample.steps=2000", "teacher.sample.steps"),
    ("evaluate.teacher_sampler.steps=1001", "evaluate.teacher_sampler.steps"),
    ("unlearn.methods.sa.replay.sampler=ddim", None),  # fine alone: the next case makes it too long
    ("teacher.source=file", "teacher.file.path"),
    ("diffusion.num_train_timesteps=0", "diffusion.num_train_timesteps"),
    ("classifier.val_fraction=1.0", "classifier.val_fraction"),
    ("unlearn.ema_decay=1.5", "unlearn.ema_decay"),
    ("data.num_classes=5", "data.num_classes"),
]
# Whole-config overrides (outside one dataset's section)
MALFORMED_TOP = [
    ([f"datasets.{DS}.unlearn.methods.sa.replay.sampler=ddim", f"datasets.{DS}.unlearn.methods.sa.replay.steps=5000"],
     "methods.sa.replay.steps"),
    ([f"datasets.{DS}.teacher.source=file", f"datasets.{DS}.teacher.file.path=t.safetensors",
      f"datasets.{DS}.teacher.file.sha256=dd14a884"], "teacher.file.sha256"),
    (["report.reference_method=nosuch"], "report.reference_method"),
    (["report.references={pecker: nosuch}"], "report.references.pecker"),
    (["device=tpu"], "'device'"),
    ([f"datasets.{DS}.data.source=cifar10"], "data.channels"),  # test.yaml is grey: colour is never made grey
]


@pytest.mark.parametrize("override, key", MALFORMED)
def test_malformed_configs_fail_validation_naming_the_key(override, key):
    if key is None:
        C.resolve([TEST_YAML], [f"datasets.{DS}.{override}"])
        return
    with pytest.raises(C.ConfigError, match=key.replace(".", r"\.")):
        C.resolve([TEST_YAML], [f"datasets.{DS}.{override}"])


@pytest.mark.parametrize("overrides, key", MALFORMED_TOP)
def test_malformed_whole_configs_fail_validation_naming_the_key(overrides, key):
    with pytest.raises(C.ConfigError, match=key.replace(".", r"\.")):
        C.resolve([TEST_YAML], overrides)


# ----------------------------------------------------------------------------- corrupted and edited artefacts


def _truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _flip(path):
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    path.write_bytes(bytes(raw))


def _edit_sidecar(key, value):
    def edit(path):
        meta = json.loads(path.read_text())
        meta[key] = value
        path.write_text(json.dumps(meta))
    return edit


CORRUPTIONS = {  # name -> (which file, how), what the one-line message says
    "truncated tensors": ("safetensors", _truncate, "sha256 of"),
    "flipped bit in tensors": ("safetensors", _flip, "sha256 of"),
    "deleted tensors": ("safetensors", lambda p: p.unlink(), "not found"),
    "edited sidecar (architecture)": ("json", None, "does not match its digest"),
    "edited sidecar (sha256 prefix)": ("json", None, "does not match its digest"),
    "truncated sidecar": ("json", _truncate, "unreadable JSON"),
    "sidecar without digest": ("json", None, "no integrity digest"),
    "deleted sidecar": ("json", lambda p: p.unlink(), "not found"),
}


def _corrupt(prefix, name):
    which, how, _ = CORRUPTIONS[name]
    path = prefix.with_suffix("." + which)
    if name == "edited sidecar (architecture)":
        meta = json.loads(path.read_text())
        meta["unet_config"]["sample_size"] = 16
        path.write_text(json.dumps(meta))
    elif name == "edited sidecar (sha256 prefix)":
        _edit_sidecar("sha256", json.loads(path.read_text())["sha256"][:1])(path)
    elif name == "sidecar without digest":
        meta = json.loads(path.read_text())
        del meta["digest"]
        path.write_text(json.dumps(meta))
    else:
        how(path)


@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_a_corrupt_or_edited_checkpoint_is_refused_in_one_line_naming_the_file(teacher, tmp_path, name):
    import shutil

    prefix = tmp_path / "ema"
    for ext in (".safetensors", ".json"):
        shutil.copy(teacher.with_suffix(ext), prefix.with_suffix(ext))
    _corrupt(prefix, name)
    with pytest.raises(io.IntegrityError, match=CORRUPTIONS[name][2]) as err:
        io.load_checkpoint(prefix)
    assert str(prefix) in str(err.value) and "\n" not in str(err.value)
    # through the CLI: exit code 1, one line, no traceback, the file named, what to do
    res = CliRunner().invoke(main, ["teacher", "sample", "--config", TEST_YAML, *[a for o in OVR for a in ("--set", o)],
                                    "-d", DS, "--teacher", str(prefix), "--out", str(tmp_path / "s.npz")])
    assert res.exit_code == 1, res.output
    assert "Traceback" not in res.output and str(prefix) in res.output, res.output
    assert "rerun" in res.output, res.output
    assert not (tmp_path / "s.npz").exists()


def test_resume_falls_back_past_an_edited_state_and_removes_leftover_temp_files(tmp_path):
    run = RunFolder(tmp_path, "h", "test run")
    for step in (2, 4):
        run.save_state(step, {"w": torch.full((3,), float(step))}, {})
    _edit_sidecar("step", 3)(run.step_dir(4) / "state.json")  # edited by hand: its digest no longer matches
    leftover = run.step_dir(4) / f".state.safetensors{io.TEMP_MARK}abcd1234.safetensors"
    leftover.write_bytes(b"half a write")
    tensors, meta, prev = run.resume(10)
    assert meta["step"] == 2 and float(tensors["w"][0]) == 2.0
    assert not leftover.exists()


KILLED_WRITER = """
import sys, torch
from pecker.runs import RunFolder
run = RunFolder(sys.argv[1], "h", "killed run")
run.save_state(1, {"w": torch.ones(4)}, {})
print("state 1 written", flush=True)
run.save_state(2, {"w": torch.ones(40_000_000)}, {})  # 160 MB: long enough to be killed mid-write
"""


@pytest.mark.slow
def test_kill_9_during_a_checkpoint_write_then_resume(tmp_path):
    """kill -9 while the second state is being written: no state 2 exists (the sidecar is written last),
    the temp file is removed by the next run, and the run resumes from state 1."""
    import os
    import signal
    import subprocess
    import sys
    import time

    proc = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(tmp_path)], stdout=subprocess.PIPE, text=True,
                            cwd=C.REPO_ROOT)
    assert proc.stdout.readline().strip() == "state 1 written"
    step2 = tmp_path / "ckpt" / "step0000002"
    deadline = time.monotonic() + 120
    while not list(step2.glob(f".state.safetensors{io.TEMP_MARK}*")):  # the write has begun
        assert proc.poll() is None and time.monotonic() < deadline, "the writer finished before it could be killed"
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (step2 / "state.json").exists()
    run = RunFolder(tmp_path, "h", "killed run")
    tensors, meta, _ = run.resume(10)
    assert meta["step"] == 1 and torch.equal(tensors["w"], torch.ones(4))
    assert not list(tmp_path.rglob(f"*{io.TEMP_MARK}*"))


# ----------------------------------------------------------------------------- concurrent invocations

SLOW_TEACHER = "datasets: {mnist-tiny: {teacher: {steps: 400, checkpoint_every: 200, log_every: 100}}}\n"
# the same, drawing half the samples: what a stray invocation used to write into the running one's config
OTHER = "datasets: {mnist-tiny: {teacher: {steps: 400, checkpoint_every: 200, log_every: 100, sample: {per_class: 2}}}}\n"
SAMPLES = "results/mnist-tiny/teacher/samples.npz"


@pytest.mark.slow
def test_other_invocations_never_change_a_running_workflow(tmp_path):
    """While a workflow runs, a dry run and a real run with another config (both refused: the
    directory is locked) exit non-zero, write nothing, and leave its outputs identical to a run alone."""
    import subprocess
    import time

    from tests.helpers import snakemake, snakemake_cmd, snakemake_env

    slow, other = tmp_path / "slow.yaml", tmp_path / "other.yaml"
    slow.write_text(SLOW_TEACHER)
    other.write_text(OTHER)
    main_dir, alone = tmp_path / "main", tmp_path / "alone"
    files = ["--configfile", TEST_YAML, str(slow)]
    running = subprocess.Popen(snakemake_cmd(main_dir, SAMPLES, *files), env=snakemake_env(),
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    teacher_log = main_dir / "results" / "logs" / DS / "train_teacher.log"
    sample_log = main_dir / "results" / "logs" / DS / "sample_teacher.log"
    deadline = time.monotonic() + 300
    while not teacher_log.exists():
        assert running.poll() is None and time.monotonic() < deadline, running.communicate()[0][-4000:]
        time.sleep(0.2)
    configs = main_dir / "results" / DS / "configs"
    before = {p.name: p.read_bytes() for p in configs.iterdir()}
    assert len(before) == 1
    others = ["--configfile", TEST_YAML, str(other)]
    for extra in (["-n"], []):
        res = snakemake(main_dir, SAMPLES, *extra, *others, check=False, timeout=300)
        assert res.returncode != 0, (extra, res.stdout[-2000:])
        assert "lock" in (res.stdout + res.stderr).lower(), res.stdout[-2000:] + res.stderr[-2000:]
    # the interference came while the teacher still trained, before the samples job read its config
    assert running.poll() is None and not sample_log.exists(), "teacher finished too early: raise SLOW_TEACHER steps"
    out = running.communicate(timeout=600)[0]
    assert running.returncode == 0, out[-4000:]
    assert {p.name: p.read_bytes() for p in configs.iterdir()} == before
    snakemake(alone, SAMPLES, *files, timeout=600)
    for name in ("teacher/ema.safetensors", "teacher/samples.npz"):
        got = (main_dir / "results" / DS / name).read_bytes()
        assert got == (alone / "results" / DS / name).read_bytes(), name
    assert len(io.load_npz(main_dir / SAMPLES)["images"]) == 40  # per_class 4 x 10 classes, not the other config's 2
