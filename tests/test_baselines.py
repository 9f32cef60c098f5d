"""The Table 1 baselines (docs/method.md section 5): Retrain, Selective Amnesia, SalUn, SFD-Two-Stage.

Each test checks a property a wrong implementation would break, not only that the code runs."""

from __future__ import annotations

import csv

import pytest
import torch
from safetensors.torch import load_file

from pecker import config as C
from pecker import io
from pecker.diffusion.conditioning import ClassCondition
from pecker.diffusion.schedule import Schedule, draw_timesteps, make_scheduler
from pecker.diffusion.unet import build_unet, load_unet, save_unet
from pecker.runs import ResumeRefused
from pecker.unlearn.baselines import run_baseline
from pecker.unlearn.baselines import salun as salun_mod
from pecker.unlearn.baselines import sa as sa_mod
from pecker.unlearn.mask import saliency_gradients, top_ratio_mask
from pecker.unlearn.settings import method_settings
from pecker.unlearn.trainer import run_unlearning
from tests.helpers import tiny_dataset

DS = "mnist-tiny"
TEST_YAML = str(C.REPO_ROOT / "config" / "test.yaml")
OVR = [f"datasets.{DS}.unet.base_channels=8", f"datasets.{DS}.unet.norm_num_groups=4"]


def cfg(*extra):
    return C.resolve([TEST_YAML], [*OVR, *extra])


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    """Raw and EMA teachers of the tiny network (different weights, so a mix-up shows)."""
    ds = cfg()["datasets"][DS]
    out = tmp_path_factory.mktemp("teacher")
    torch.manual_seed(0)
    save_unet(out / "model", build_unet(ds["unet"], ds["data"]), {"kind": "teacher", "weights": "raw"})
    torch.manual_seed(1)
    save_unet(out / "ema", build_unet(ds["unet"], ds["data"]), {"kind": "teacher", "weights": "ema"})
    return out


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return tiny_dataset(tmp_path_factory.mktemp("data"), n_per_class=6)


# ----------------------------------------------------------------------------- SA


def test_ewc_penalty_is_zero_at_the_teacher_and_quadratic_off_it():
    torch.manual_seed(0)
    star = [torch.randn(3, 4), torch.randn(5)]
    fisher = [torch.rand(3, 4), torch.rand(5)]
    direction = [torch.randn(3, 4), torch.randn(5)]
    assert sa_mod.ewc_penalty(star, star, fisher).item() == 0.0
    expected = sum((f * d ** 2).sum() for f, d in zip(fisher, direction)).item()
    for scale in (0.5, 1.0, 3.0):
        moved = [p + scale * d for p, d in zip(star, direction)]
        assert sa_mod.ewc_penalty(moved, star, fisher).item() == pytest.approx(scale ** 2 * expected, rel=1e-5)


class Scalar(torch.nn.Module):
    """eps(z, t, c) = w * z: one parameter, a Fisher with a closed form."""

    def __init__(self, w: float):
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor(w))

    def forward(self, z, t, class_labels=None):
        return type("Out", (), {"sample": self.w * z})()


@pytest.mark.parametrize("n_t", [None, 7])
def test_fisher_of_a_one_parameter_model_has_its_closed_form(n_t):
    # noise eps_t = 0: the loss of sample x is sum_t sum_pixels (w a_t x)^2, so
    # g = 2 w ||x||^2 sum_t a_t^2 (times T / n over a subset of n timesteps) and F = mean_i g_i^2
    sched = Schedule(make_scheduler({"num_train_timesteps": 20}))
    x = torch.randn(4, 1, 2, 2)
    w = 0.7
    gen = torch.Generator().manual_seed(0)
    subsets = []

    def timesteps():
        ts = torch.arange(sched.T) if n_t is None else torch.randperm(sched.T, generator=gen)[:n_t]
        subsets.append(ts)
        return ts

    fisher = sa_mod.fisher_diagonal(Scalar(w), sched, x, ClassCondition(torch.zeros(4, dtype=torch.long), 10),
                                    lambda shape: torch.zeros(shape), timesteps, t_batch=3)
    g = torch.stack([2 * w * (xi ** 2).sum() * (sched.a[ts] ** 2).sum() * (sched.T / len(ts))
                     for xi, ts in zip(x, subsets)])
    assert fisher[0].item() == pytest.approx((g ** 2).mean().item(), rel=1e-5)


def test_sa_refuses_a_replay_with_the_forget_class():
    with pytest.raises(ValueError, match="forget class 0"):
        sa_mod.SelectiveAmnesia.for_classes({"batch_size": 2}, None, torch.zeros(3, 1, 4, 4), torch.tensor([1, 0, 2]),
                                            [], [], 0, 10, False)


def test_sa_run_replays_only_the_retained_classes_and_resumes_bit_identically(teacher, tmp_path, monkeypatch):
    seen = []
    orig = sa_mod.SelectiveAmnesia.__init__

    def spy(self, s, sched, replay, cond, *a, **k):
        seen.append(cond.labels.clone())
        orig(self, s, sched, replay, cond, *a, **k)

    monkeypatch.setattr(sa_mod.SelectiveAmnesia, "__init__", spy)
    c = cfg()
    args = dict(teacher_prefix=teacher / "ema", teacher_raw_prefix=teacher / "model")
    full = run_baseline(c, DS, "sa", 0, tmp_path / "full", **args)
    assert set(seen[0].tolist()) == set(range(1, 10))  # replay of the retained classes only
    inputs = load_file(str(tmp_path / "full" / "ckpt" / "inputs.safetensors"))
    assert set(inputs["replay.labels"].tolist()) == set(range(10))  # the Fisher's samples: all classes
    assert full["data_free"] is True and full["weights"] == "ema" and full["forget"]["label"] == 0
    assert full["teacher_raw_sha256"] and full["teacher_sha256"]

    part = tmp_path / "part"
    assert run_baseline(c, DS, "sa", 0, part, max_steps=3, **args)["finished"] is False
    resumed = run_baseline(c, DS, "sa", 0, part, **args)
    assert resumed["sha256"] == full["sha256"]  # same weights as the uninterrupted run
    with open(part / "log.csv") as fh:
        assert [int(r["step"]) for r in csv.DictReader(fh)] == [1, 2, 3, 4]

    # a changed setting is refused, nothing is overwritten
    with pytest.raises(ResumeRefused):
        run_baseline(cfg(f"datasets.{DS}.unlearn.methods.sa.gamma=2.0"), DS, "sa", 0, part, **args)


def test_sa_starts_from_the_raw_teacher_and_its_ema_from_the_teachers_ema(teacher, tmp_path):
    c = cfg(f"datasets.{DS}.unlearn.methods.sa.lr=1.0e-12", f"datasets.{DS}.unlearn.methods.sa.ema_decay=1.0")
    run_baseline(c, DS, "sa", 0, tmp_path, teacher_prefix=teacher / "ema", teacher_raw_prefix=teacher / "model")
    result = load_file(str(tmp_path / "unet.safetensors"))
    ema = load_file(str(teacher / "ema.safetensors"))
    raw = load_file(str(teacher / "model.safetensors"))
    state = io.unprefixed("model", load_file(str(tmp_path / "ckpt" / "step0000004" / "state.safetensors")))
    name = next(k for k in ema if k.endswith("weight") and ema[k].ndim == 4)
    assert torch.equal(result[name], ema[name])  # decay 1: the EMA stays at the teacher's EMA
    assert torch.allclose(state[name], raw[name], atol=1e-8)  # lr ~0: the trained weights stay at the raw teacher


# ----------------------------------------------------------------------------- SalUn


def test_salun_mask_is_the_mask_code_on_the_clipped_accumulated_gradients(teacher):
    model, _ = load_unet(teacher / "model")
    sched = Schedule(make_scheduler({}))
    x = torch.rand(10, 1, 8, 8) * 2 - 1
    m = {"ratio": 0.3, "scope": "global", "guidance_scale": 3.0, "batch_size": 4, "clip": 0.01}
    masks = salun_mod.salun_mask(model, sched, x, 0, 10, m, torch.Generator().manual_seed(5), hflip=False)

    rng = torch.Generator().manual_seed(5)  # the same draws by hand
    params = list(model.parameters())
    total = [torch.zeros_like(p) for p in params]
    for i in range(0, 10, 4):
        xb = x[i:i + 4]
        t = draw_timesteps(len(xb), sched.T, rng, True)
        eps = torch.randn(xb.shape, generator=rng)
        _, g = saliency_gradients(model, sched, xb, t, eps, ClassCondition.full(len(xb), 0, 10, guidance=3.0), params)
        norm = torch.sqrt(sum((gi ** 2).sum() for gi in g))
        assert norm > 0.01  # the clip is active in this test
        total = [a + gi * (0.01 / (norm + 1e-6)) for a, gi in zip(total, g)]
    expected = top_ratio_mask(total, 0.3, "global")
    assert all(torch.equal(a, b) for a, b in zip(masks, expected))


def test_salun_changes_only_masked_entries(teacher, data, tmp_path):
    c = cfg(f"datasets.{DS}.unlearn.methods.salun.mask.ratio=0.2")
    meta = run_baseline(c, DS, "salun", 0, tmp_path, teacher_raw_prefix=teacher / "model", data_dir=data)
    assert meta["data_free"] is False and meta["weights"] == "raw"
    before = load_file(str(teacher / "model.safetensors"))
    after = load_file(str(tmp_path / "unet.safetensors"))
    masks = load_file(str(tmp_path / "ckpt" / "inputs.safetensors"))
    changed = kept = 0
    for name, m in masks.items():
        key = name[len("mask."):]
        moved = before[key] != after[key]
        assert not moved[~m].any(), key  # outside the mask: untouched
        changed += int(moved[m].sum())
        kept += int(m.sum())
    assert changed > 0.5 * kept  # inside it: trained
    assert 0.15 < kept / sum(m.numel() for m in masks.values()) < 0.25


def test_salun_pseudo_labels():
    assert salun_mod.pseudo_labels(9, 10, 3, "next", None).tolist() == [0, 0, 0]
    drawn = salun_mod.pseudo_labels(4, 10, 500, "random", torch.Generator().manual_seed(0))
    assert 4 not in drawn.tolist() and len(set(drawn.tolist())) == 9


# ----------------------------------------------------------------------------- Retrain


def test_retrain_never_sees_the_forget_class(teacher, data, tmp_path, monkeypatch):
    import pecker.diffusion.train as train_mod

    batches = []
    orig = train_mod.to_model_range

    def spy(images):
        batches.append(torch.as_tensor(images).clone())
        return orig(images)

    monkeypatch.setattr(train_mod, "to_model_range", spy)
    meta = run_baseline(cfg(), DS, "retrain", 0, tmp_path, data_dir=data)
    assert len(batches) == 6 and meta["data_free"] is False and meta["method"] == "retrain"
    # tiny_dataset: class c brightens row c; class 0 (the forget class) is the only one bright in row 0
    for b in batches:
        assert (b[:, 0].float().mean(dim=(1, 2)) < 120).all()
    assert meta["weights"] == "ema" and (tmp_path / "unet_raw.json").is_file()


# ----------------------------------------------------------------------------- SFD-Two-Stage


def test_two_stage_starts_stage_two_from_stage_ones_generator(teacher, tmp_path):
    c = cfg()
    s1 = method_settings(c["datasets"][DS]["unlearn"], "sfd_stage1", DS)
    assert s1["retain"] == "all" and s1["mu_psi"] == s1["mu_theta"] == 0
    stage1 = run_unlearning(c, DS, "sfd_stage1", 0, teacher / "ema", tmp_path / "s1")
    assert stage1["retain"] == "all"
    with pytest.raises(C.ConfigError, match="--init"):
        run_unlearning(c, DS, "sfd_two_stage", 0, teacher / "ema", tmp_path / "s2")
    stage2 = run_unlearning(c, DS, "sfd_two_stage", 0, teacher / "ema", tmp_path / "s2", init_dir=tmp_path / "s1")
    first = load_file(str(tmp_path / "s2" / "ckpt" / "step0000000" / "generator_ema.safetensors"))
    final1 = load_file(str(tmp_path / "s1" / "generator_ema.safetensors"))
    assert all(torch.equal(first[k], final1[k]) for k in final1)
    assert stage2["init_sha256"] == stage1["sha256"] and stage2["teacher_sha256"]

    # the (choice) of the official code: stage 2's teacher is stage 1's fake score
    c2 = cfg(f"datasets.{DS}.unlearn.methods.sfd_two_stage.stage2_teacher=fake_score")
    fs = run_unlearning(c2, DS, "sfd_two_stage", 0, teacher / "ema", tmp_path / "s2fs", init_dir=tmp_path / "s1")
    assert fs["stage2_teacher_sha256"] and fs["sha256"] != stage2["sha256"]


# ----------------------------------------------------------------------------- config


@pytest.mark.parametrize("override, message", [
    ("methods.sa={kind: sa, lam_psi: 1.0}", "lam_psi"),
    ("methods.salun={kind: salun, pseudo_label: oops}", "oops"),
    ("methods.x={lam_psi: 1, mu_psi: 1, lam_theta: 1, mu_theta: 1, init_from: nope}", "init_from"),
    ("methods.x={lam_psi: 1, mu_psi: 1, lam_theta: 1, mu_theta: 1, init_from: sfd_two_stage}", "one-stage"),
])
def test_bad_baseline_configs_name_the_key(override, message):
    with pytest.raises(C.ConfigError, match=message):
        c = cfg(f"datasets.{DS}.unlearn.{override}")
        method_settings(c["datasets"][DS]["unlearn"], "x", DS)


def test_timesteps_draw_is_antithetic():
    t = draw_timesteps(7, 1000, torch.Generator().manual_seed(0), antithetic=True)
    assert torch.equal(t[4:], 999 - t[:3]) and len(t) == 7
