"""SFD / PECKER losses against a plain per-sample reference computation (docs/method.md section 3)."""

from __future__ import annotations

import math

import pytest
import torch

from pecker.diffusion.schedule import Schedule, make_scheduler
from pecker.diffusion.unet import build_unet
from pecker.diffusion.conditioning import ClassCondition as CC
from pecker.unlearn.losses import DenoiseTerm, ScoreTerm, denoising_loss, denoising_terms, score_terms, sid_per_sample

DATA = {"resolution": 8, "channels": 1, "num_classes": 10}
UNET = {"base_channels": 8, "channel_mult": [1, 2], "layers_per_block": 1, "attention_resolutions": [4],
        "dropout": 0.1, "attention_head_dim": 8, "norm_num_groups": 4}

# The linear DDPM schedule written out (docs/method.md section 2), independent of diffusers.
BETAS = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
ABAR = torch.cumprod(1.0 - BETAS, 0)


def a_s(t: int) -> tuple[float, float]:
    return math.sqrt(ABAR[t]), math.sqrt(1.0 - ABAR[t])


def eps_of(model, z, t, c):
    return model(z[None], torch.tensor([t]), class_labels=torch.tensor([c])).sample[0]


def nets():
    torch.manual_seed(0)
    teacher = build_unet(UNET, DATA).eval()
    psi = build_unet(UNET, DATA).eval()  # different random weights: Q is not zero
    return teacher, psi


def batch(n, seed, label=None):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 8, 8, generator=g)
    c = torch.randint(1, 10, (n,), generator=g) if label is None else torch.full((n,), label)
    t = torch.randint(38, 712, (n,), generator=g)
    eps = torch.randn(n, 1, 8, 8, generator=g)
    return x, c, t, eps


def ref_denoising(model, x, c, t, eps):
    total = 0.0
    for i in range(len(x)):
        a, s = a_s(int(t[i]))
        z = a * x[i] + s * eps[i]
        total = total + ((eps[i] - eps_of(model, z, int(t[i]), int(c[i]))) ** 2).sum()
    return total / len(x)


def ref_sid(teacher, psi, x, t, eps, c_teacher, c_fake, xi, clamp=1e-5):
    """Mean over the batch of Q . [(x_phi - x) - xi Q] / sg(mean|x_phi - x|), written per sample."""
    total = 0.0
    for i in range(len(x)):
        ti = int(t[i])
        a, s = a_s(ti)
        z = a * x[i] + s * eps[i]
        x_phi = (z - s * eps_of(teacher, z, ti, int(c_teacher[i]))) / a
        x_psi = (z - s * eps_of(psi, z, ti, int(c_fake[i]))) / a
        q = x_phi - x_psi
        w = max(float((x_phi - x[i]).abs().mean().detach()), clamp)  # a plain float: no gradient
        total = total + (q * ((x_phi - x[i]) - xi * q)).sum() / w
    return total / len(x)


def test_schedule_matches_written_out_linear_schedule():
    sched = Schedule(make_scheduler({}))
    for t in (38, 440, 711, 999):
        a, s = a_s(t)
        assert float(sched.a[t]) == pytest.approx(a, rel=1e-5)
        assert float(sched.s[t]) == pytest.approx(s, rel=1e-5)
    assert sched.sigma(440) == pytest.approx(2.5, abs=0.05)


def test_denoising_and_psi_loss_match_reference():
    teacher, psi = nets()
    sched = Schedule(make_scheduler({}))
    x_r, c_r, t_r, e_r = batch(3, 1)
    x_f, c_f, t_f, e_f = batch(2, 2, label=0)
    with torch.no_grad():
        ref_r = ref_denoising(psi, x_r, c_r, t_r, e_r)
        ref_f = ref_denoising(psi, x_f, c_f, t_f, e_f)
        assert float(denoising_loss(psi, sched, x_r, t_r, e_r, CC(c_r))) == pytest.approx(float(ref_r), rel=1e-4)
        rem, fgt = denoising_terms(psi, sched, [DenoiseTerm(x_r, t_r, e_r, CC(c_r)), DenoiseTerm(x_f, t_f, e_f, CC(c_f))])
        total = 0.7 * rem + 0.01 * fgt
    assert float(rem) == pytest.approx(float(ref_r), rel=1e-4)
    assert float(fgt) == pytest.approx(float(ref_f), rel=1e-4)
    assert float(total) == pytest.approx(0.7 * float(ref_r) + 0.01 * float(ref_f), rel=1e-4)


def test_score_terms_match_reference_values_and_gradients():
    teacher, psi = nets()
    sched = Schedule(make_scheduler({}))
    x_r, c_r, t_r, e_r = batch(3, 3)
    x_f, c_f, t_f, e_f = batch(2, 4, label=0)
    c_o, xi = 1, 1.2

    xr1, xf1 = x_r.clone().requires_grad_(), x_f.clone().requires_grad_()
    rem, fgt = score_terms(teacher, psi, sched, [ScoreTerm(xr1, t_r, e_r, CC(c_r), CC(c_r)),
                                                 ScoreTerm(xf1, t_f, e_f, CC.full(2, c_o), CC(c_f))], xi, 1e-5)
    g_impl = torch.autograd.grad(0.3 * rem + 0.05 * fgt, (xr1, xf1))

    xr2, xf2 = x_r.clone().requires_grad_(), x_f.clone().requires_grad_()
    ref_rem = ref_sid(teacher, psi, xr2, t_r, e_r, c_r, c_r, xi)
    ref_fgt = ref_sid(teacher, psi, xf2, t_f, e_f, torch.full_like(c_f, c_o), c_f, xi)  # teacher at c_o, psi at c_f
    g_ref = torch.autograd.grad(0.3 * ref_rem + 0.05 * ref_fgt, (xr2, xf2))

    assert rem.item() == pytest.approx(ref_rem.item(), rel=1e-4, abs=1e-5)
    assert fgt.item() == pytest.approx(ref_fgt.item(), rel=1e-4, abs=1e-5)
    for gi, gr in zip(g_impl, g_ref):
        torch.testing.assert_close(gi, gr, rtol=1e-3, atol=1e-5)

    # the test is sensitive to the labels: querying the teacher at c_f instead of c_o differs
    with torch.no_grad():
        wrong = ref_sid(teacher, psi, x_f, t_f, e_f, c_f, c_f, xi)
    assert abs(wrong.item() - ref_fgt.item()) > 1e-3 * abs(ref_fgt.item())


def test_score_terms_teacher_and_psi_see_the_same_noisy_input():
    teacher, psi = nets()
    sched = Schedule(make_scheduler({}))
    seen = {}
    teacher.register_forward_pre_hook(lambda m, args, kw: seen.__setitem__("phi", (args[0].clone(), args[1].clone())), with_kwargs=True)
    psi.register_forward_pre_hook(lambda m, args, kw: seen.__setitem__("psi", (args[0].clone(), args[1].clone())), with_kwargs=True)
    x_r, c_r, t_r, e_r = batch(2, 5)
    x_f, c_f, t_f, e_f = batch(2, 6, label=0)
    with torch.no_grad():
        score_terms(teacher, psi, sched, [ScoreTerm(x_r, t_r, e_r, CC(c_r), CC(c_r)),
                                          ScoreTerm(x_f, t_f, e_f, CC.full(2, 1), CC(c_f))], 1.2, 1e-5)
    torch.testing.assert_close(seen["phi"][0], seen["psi"][0], rtol=0, atol=0)
    assert torch.equal(seen["phi"][1], seen["psi"][1])


def test_normaliser_is_clamped_and_carries_no_gradient():
    torch.manual_seed(0)
    x = torch.randn(3, 1, 4, 4, requires_grad=True)
    x_phi = torch.randn(3, 1, 4, 4)
    x_psi = torch.randn(3, 1, 4, 4)
    xi = 1.2
    l = sid_per_sample(x, x_phi, x_psi, xi, 1e-5)
    q = x_phi - x_psi
    w = (x_phi - x.detach()).abs().flatten(1).mean(1)
    expected = (q * ((x_phi - x.detach()) - xi * q)).flatten(1).sum(1) / w
    torch.testing.assert_close(l.detach(), expected)
    # with x_phi, x_psi fixed, d l_i / d x_i = -Q_i / w_i exactly when the normaliser is a constant
    (g,) = torch.autograd.grad(l.sum(), x)
    torch.testing.assert_close(g, -q / w.view(-1, 1, 1, 1))

    # x_phi == x: the normaliser is 0 and clamps at 1e-5
    x0 = x_phi.clone()
    l0 = sid_per_sample(x0, x_phi, x_psi, xi, 1e-5)
    torch.testing.assert_close(l0, (q * (-xi * q)).flatten(1).sum(1) / 1e-5)
