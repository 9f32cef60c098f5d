"""The one-step generator and the structure of one SFD / PECKER iteration (docs/method.md section 3)."""

from __future__ import annotations

import math

import pytest
import torch

from pecker import config as C
from pecker.diffusion.conditioning import ClassCondition
from pecker.diffusion.unet import build_unet, save_unet
from pecker.unlearn.generator import OneStepGenerator, load_generator, sample_generator, save_generator
from pecker.unlearn.settings import method_settings
from pecker.unlearn.trainer import Unlearner, class_task

DS = "mnist-tiny"
TINY = [f"datasets.{DS}.unet.base_channels=8", f"datasets.{DS}.unet.norm_num_groups=4"]


def tiny_cfg(*overrides):
    return C.resolve([C.REPO_ROOT / "config" / "test.yaml"], [*TINY, *overrides])


def make_unlearner(method="sfd", *overrides, seed=0):
    cfg = tiny_cfg(*overrides)
    ds = cfg["datasets"][DS]
    torch.manual_seed(123)
    teacher = build_unet(ds["unet"], ds["data"])
    s = method_settings(ds["unlearn"], method, DS)
    return Unlearner(teacher, ds["diffusion"], s, class_task(s, 10, teacher), seed), teacher


def snapshot(module):
    return [p.detach().clone() for p in module.parameters()]


def same(a, b):
    return all(torch.equal(x, y) for x, y in zip(a, b))


def test_generator_at_init_is_the_teachers_x0_estimate_at_t_init():
    unl, teacher = make_unlearner()
    gen = unl.gen.eval()
    abar = torch.cumprod(1 - torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64), 0)[440]
    a, s = math.sqrt(abar), math.sqrt(1 - abar)
    assert gen.t_init == 440 and gen.a_init == pytest.approx(a, rel=1e-5) and gen.s_init == pytest.approx(s, rel=1e-5)
    n = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    c = torch.tensor([0, 3, 5, 9])
    with torch.no_grad():
        z0 = s * n
        eps = teacher.eval()(z0, torch.full((4,), 440), class_labels=c).sample
        expected = (z0 - s * eps) / a
        torch.testing.assert_close(gen(n, ClassCondition(c)), expected, rtol=1e-5, atol=1e-5)
    # all three networks start from the teacher's weights, and are separate copies
    assert same(snapshot(unl.gen.unet), snapshot(teacher)) and same(snapshot(unl.psi), snapshot(teacher))
    assert unl.gen.unet.conv_in.weight.data_ptr() != teacher.conv_in.weight.data_ptr()
    assert unl.psi.conv_in.weight.data_ptr() != teacher.conv_in.weight.data_ptr()


def test_save_load_generator_roundtrip(tmp_path):
    unl, teacher = make_unlearner()
    save_generator(tmp_path / "g", unl.gen, {}, {"method": "sfd"})
    gen2, meta = load_generator(tmp_path / "g")
    assert meta["kind"] == "one_step_generator" and meta["t_init"] == 440 and meta["method"] == "sfd"
    y = torch.arange(10)
    a = sample_generator(unl.gen, y, torch.Generator().manual_seed(0))
    b = sample_generator(gen2, y, torch.Generator().manual_seed(0))
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    save_unet(tmp_path / "t", teacher, {"kind": "teacher"})
    with pytest.raises(ValueError, match="one_step_generator"):
        load_generator(tmp_path / "t")


def test_psi_step_changes_only_psi_theta_step_only_theta_teacher_never():
    unl, teacher = make_unlearner("pecker")
    t0, g0, p0 = snapshot(teacher), snapshot(unl.gen.unet), snapshot(unl.psi)
    c_r, c_f, c_o = unl.draw_conditions()
    _, x_f = unl.psi_step(c_r, c_f)
    t1, g1, p1 = snapshot(teacher), snapshot(unl.gen.unet), snapshot(unl.psi)
    assert same(t0, t1) and same(g0, g1) and not same(p0, p1)
    unl.refresh_mask(x_f)
    assert same(g0, snapshot(unl.gen.unet)) and same(p1, snapshot(unl.psi))
    unl.theta_step(c_r, c_f, c_o)
    t2, g2, p2 = snapshot(teacher), snapshot(unl.gen.unet), snapshot(unl.psi)
    assert same(t0, t2) and same(p1, p2) and not same(g1, g2)
    assert all(p.grad is None for p in teacher.parameters())
    assert all(p.grad is None for p in unl.psi.parameters())


def test_modes_labels_and_inputs_within_one_iteration():
    unl, teacher = make_unlearner("pecker")
    calls = []

    def hook(name):
        def f(module, args, kwargs):
            calls.append((name, module.training, args[0].detach().clone(), args[1].clone(),
                          kwargs["class_labels"].clone(), torch.is_grad_enabled()))
        return f

    teacher.register_forward_pre_hook(hook("phi"), with_kwargs=True)
    unl.psi.register_forward_pre_hook(hook("psi"), with_kwargs=True)
    unl.gen.unet.register_forward_pre_hook(hook("gen"), with_kwargs=True)
    unl.train_step()
    names = [c[0] for c in calls]
    # samples (gen, eval, no grad) -> psi step (psi, train) -> saliency (gen, train) -> theta step
    assert names == ["gen", "psi", "gen", "gen", "gen", "phi", "psi"]
    gen_samples, psi_train, sal, gen_r, gen_f, phi, psi_eval = calls
    assert not gen_samples[1] and not gen_samples[5]
    assert psi_train[1]
    assert sal[1] and (sal[4] == 0).all()
    assert gen_r[1] and gen_f[1] and gen_r[5]
    assert not phi[1] and not psi_eval[1]
    # teacher and psi see the same z_t and t in the theta step
    assert torch.equal(phi[2], psi_eval[2]) and torch.equal(phi[3], psi_eval[3])
    # labels: retain labels never the forget class; forget term: teacher at c_o=1, psi at c_f=0
    c_r, c_f = gen_r[4], gen_f[4]
    assert (c_r != 0).all() and (c_f == 0).all()
    B = len(c_r)
    assert torch.equal(phi[4][:B], c_r) and (phi[4][B:] == 1).all()
    assert torch.equal(psi_eval[4][:B], c_r) and (psi_eval[4][B:] == 0).all()
    # t in [t_min, t_max) and the generator's input is at t_init
    assert ((phi[3] >= 38) & (phi[3] < 712)).all() and (gen_r[3] == 440).all()


def test_retain_labels_cover_the_remaining_classes_uniformly():
    unl, _ = make_unlearner("sfd", f"datasets.{DS}.unlearn.batch_size=900")
    c_r, c_f, c_o = unl.draw_conditions()
    counts = torch.bincount(c_r.labels, minlength=10)
    assert counts[0] == 0 and (counts[1:] > 60).all() and (c_f.labels == 0).all() and (c_o.labels == 1).all()


def test_optimiser_clip_and_ema():
    unl, _ = make_unlearner("sfd", f"datasets.{DS}.unlearn.ema_decay=0.75",
                            f"datasets.{DS}.unlearn.grad_clip_value=0.001")
    for opt in (unl.opt_theta, unl.opt_psi):
        assert tuple(opt.param_groups[0]["betas"]) == (0.0, 0.999) and opt.param_groups[0]["eps"] == 1e-8
    init = snapshot(unl.gen.unet)
    seen = []
    orig = unl.opt_theta.step

    def spy(*a, **k):
        seen.append(max(float(p.grad.abs().max()) for p in unl.params))
        return orig(*a, **k)

    unl.opt_theta.step = spy
    row = unl.train_step()
    assert seen and seen[0] <= 0.001 + 1e-9 and row["grad_norm_theta"] > 0.001
    for e, p0, p1 in zip(unl.ema, init, snapshot(unl.gen.unet)):
        torch.testing.assert_close(e, 0.75 * p0 + 0.25 * p1)


def test_unknown_method_names_the_key():
    cfg = tiny_cfg()
    with pytest.raises(C.ConfigError, match=rf"datasets\.{DS}\.unlearn\.methods\.nope"):
        method_settings(cfg["datasets"][DS]["unlearn"], "nope", DS)


def test_method_overrides_and_schema():
    cfg = tiny_cfg(f"datasets.{DS}.unlearn.methods.pecker_once="
                   "{lam_psi: 1, mu_psi: 1, lam_theta: 1, mu_theta: 1, lr_psi: 0.003, mask: {enabled: true, refresh: once}}")
    s = method_settings(cfg["datasets"][DS]["unlearn"], "pecker_once", DS)
    assert s["lr_psi"] == 0.003 and s["lr_theta"] == 1e-4 and s["mask"]["refresh"] == "once"
    assert s["mask"]["t_min"] == 38 and s["mask"]["batch_size"] == s["forget_batch_size"] == 4
    with pytest.raises(C.ConfigError, match="methods.pecker.mask"):
        tiny_cfg(f"datasets.{DS}.unlearn.methods.pecker.mask.scope=everywhere")
    with pytest.raises(C.ConfigError, match="methods.x"):
        tiny_cfg(f"datasets.{DS}.unlearn.methods.x={{lam_psi: 1}}")
