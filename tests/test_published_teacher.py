"""The published SA teachers' network inside the pipeline (issue: published teachers): selected by
``unet.arch: ddpm_conditional``, trained, sampled and unlearned through the same code as the
``UNet2DModel`` teacher, and fetched from a checkpoint in the authors' layout (``teacher.source:
published``) only after its full sha256 matched."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from pecker import config as C
from pecker import io
from pecker.cli import main
from pecker.diffusion.ddpm_conditional import DDPMConditionalUNet
from pecker.diffusion.unet import build_unet, load_unet, null_label
from tests.helpers import REPO, snakemake, tiny_dataset

DS = "mnist-tiny"
TEST_YAML = str(REPO / "config" / "test.yaml")
ARCH = [f"datasets.{DS}.unet.arch=ddpm_conditional", f"datasets.{DS}.unet.base_channels=16",
        f"datasets.{DS}.unet.norm_num_groups=8", f"datasets.{DS}.teacher.steps=4",
        f"datasets.{DS}.teacher.checkpoint_every=2", f"datasets.{DS}.unlearn.steps=2",
        f"datasets.{DS}.unlearn.checkpoint_every=2"]


def _sets(overrides):
    return [a for o in overrides for a in ("--set", o)]


def _invoke(*args):
    res = CliRunner().invoke(main, [str(a) for a in args])
    return res


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny ddpm_conditional teacher trained by the project's teacher trainer."""
    tmp = tmp_path_factory.mktemp("ddpm")
    data = tiny_dataset(tmp, res=8)
    out = tmp / "teacher"
    res = _invoke("teacher", "train", "--config", TEST_YAML, *_sets(ARCH), "-d", DS, "--data", data, "--out", out)
    assert res.exit_code == 0, res.output
    return tmp, data, out


def test_config_selects_the_network_and_the_null_label():
    ds = C.resolve([TEST_YAML], ARCH)["datasets"][DS]
    net = build_unet(ds["unet"], ds["data"])
    assert isinstance(net, DDPMConditionalUNet) and null_label(net) == 10
    assert (net.config.in_channels, net.config.sample_size) == (1, 8)
    paper = C.resolve([REPO / "config" / "cifar10.yaml", REPO / "config" / "published_cifar10.yaml"],
                      ["datasets.cifar10.teacher.file.sha256=" + "a" * 64])["datasets"]["cifar10"]
    assert sum(p.numel() for p in build_unet(paper["unet"], paper["data"]).parameters()) == 38_632_323


def test_trained_sampled_and_unlearned_like_the_unet2d_teacher(trained, tmp_path):
    tmp, data, out = trained
    model, meta = load_unet(out / "ema")
    assert isinstance(model, DDPMConditionalUNet) and meta["network"] == "ddpm_conditional"
    res = _invoke("teacher", "sample", "--config", TEST_YAML, *_sets(ARCH), "-d", DS, "--teacher", out / "ema",
                  "--out", tmp_path / "s.npz", "--per-class", 1)
    assert res.exit_code == 0, res.output
    assert io.load_npz(tmp_path / "s.npz")["images"].shape == (10, 8, 8, 1)
    for method in ("sfd", "pecker"):  # the SFD loop and PECKER's mask over this network's parameters
        run = tmp_path / method
        res = _invoke("unlearn", "--config", TEST_YAML, *_sets(ARCH), "-d", DS, "--method", method, "--seed", 0,
                      "--teacher", out / "ema", "--out", run)
        assert res.exit_code == 0, res.output
        gen, gmeta = load_unet(run / "generator_ema")
        assert isinstance(gen, DDPMConditionalUNet) and gmeta["t_init"] > 0
    base = [*ARCH, *[f"datasets.{DS}.unlearn.methods.{m}.steps=2" for m in ("sa", "salun")],
            f"datasets.{DS}.unlearn.methods.sa.checkpoint_every=2", f"datasets.{DS}.unlearn.methods.salun.checkpoint_every=2"]
    for method, inputs in (("sa", ["--teacher", out / "ema", "--teacher-raw", out / "model"]),
                           ("salun", ["--teacher-raw", out / "model", "--data", data])):  # the baselines too
        res = _invoke("unlearn", "--config", TEST_YAML, *_sets(base), "-d", DS, "--method", method, "--seed", 0,
                      *inputs, "--out", tmp_path / method)
        assert res.exit_code == 0, res.output
        assert isinstance(load_unet(tmp_path / method / "unet")[0], DDPMConditionalUNet)


def _sa_checkpoint(path, net):
    """A file in the SA authors' layout: [DataParallel model state, optimizer state, step, EMA]."""
    raw = {f"module.{k}": v.clone() for k, v in net.state_dict().items()}
    ema = {k: v + 0.5 for k, v in net.state_dict().items()}
    torch.save([raw, {"state": {}, "param_groups": []}, 799_999, ema], path)
    return raw, ema


def test_fetch_installs_the_published_ema_and_raw_weights_after_the_checksum(tmp_path):
    ds = C.resolve([TEST_YAML], ARCH)["datasets"][DS]
    torch.manual_seed(0)
    net = build_unet(ds["unet"], ds["data"])
    ckpt = tmp_path / "ckpt.pth"
    raw, ema = _sa_checkpoint(ckpt, net)
    sha = io.sha256_file(ckpt)
    published = [*ARCH, f"datasets.{DS}.teacher.source=published", f"datasets.{DS}.teacher.file.path={ckpt}"]
    out = tmp_path / "teacher"
    # a wrong hash: refused in one line, nothing read, nothing written
    res = _invoke("teacher", "fetch", "--config", TEST_YAML, *_sets([*published, f"datasets.{DS}.teacher.file.sha256={'f' * 64}"]),
                  "-d", DS, "--out", out)
    assert res.exit_code == 1 and "Traceback" not in res.output and "ckpt.pth" in res.output, res.output
    assert not out.exists()
    res = _invoke("teacher", "fetch", "--config", TEST_YAML, *_sets([*published, f"datasets.{DS}.teacher.file.sha256={sha}"]),
                  "-d", DS, "--out", out)
    assert res.exit_code == 0, res.output
    for name, want in (("ema", ema), ("model", {k[len("module."):]: v for k, v in raw.items()})):
        model, meta = load_unet(out / name)
        assert all(torch.equal(model.state_dict()[k], v) for k, v in want.items()), name
        assert meta["origin"]["sha256"] == sha and meta["source"] == "published" and meta["config_hash"]
    # a teacher to fetch is not trained
    res = _invoke("teacher", "train", "--config", TEST_YAML, *_sets([*published, f"datasets.{DS}.teacher.file.sha256={sha}"]),
                  "-d", DS, "--out", tmp_path / "t2")
    assert res.exit_code == 1 and "pecker teacher fetch" in res.output


def test_fetch_offline_says_what_to_provide(tmp_path):
    published = [*ARCH, f"datasets.{DS}.teacher.source=published", f"datasets.{DS}.teacher.file.path={tmp_path / 'absent.pth'}",
                 f"datasets.{DS}.teacher.file.sha256={'a' * 64}"]
    res = _invoke("teacher", "fetch", "--config", TEST_YAML, *_sets(published), "-d", DS, "--out", tmp_path / "t")
    assert res.exit_code == 1 and "Traceback" not in res.output, res.output
    assert "absent.pth" in res.output and "teacher.file.url" in res.output


@pytest.mark.parametrize("dataset", ["cifar10", "stl10"])
def test_paper_dry_run_fetches_instead_of_training(tmp_path, dataset):
    sha = tmp_path / "sha.yaml"
    sha.write_text(json.dumps({"datasets": {dataset: {"teacher": {"file": {"sha256": "a" * 64}}}}}))
    res = snakemake(tmp_path, "-n", "--configfile", str(REPO / "config" / f"{dataset}.yaml"),
                    str(REPO / "config" / f"published_{dataset}.yaml"), str(sha))
    assert "rule fetch_teacher:" in res.stdout and "rule train_teacher:" not in res.stdout
    assert "rule unlearn:" in res.stdout and "rule unlearn_baseline:" in res.stdout
