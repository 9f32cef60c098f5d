"""PECKER's saliency mask (docs/method.md section 4)."""

from __future__ import annotations

import pytest
import torch

from pecker import config as C
from pecker.diffusion.conditioning import ClassCondition
from pecker.diffusion.schedule import Schedule, make_scheduler
from pecker.diffusion.unet import build_unet
from pecker.unlearn.mask import density, saliency_gradients, top_ratio_mask
from pecker.unlearn.settings import method_settings
from pecker.unlearn.trainer import Unlearner, class_task

DS = "mnist-tiny"
TINY = [f"datasets.{DS}.unet.base_channels=8", f"datasets.{DS}.unet.norm_num_groups=4"]


def make_unlearner(method, *overrides):
    cfg = C.resolve([C.REPO_ROOT / "config" / "test.yaml"], [*TINY, *overrides])
    ds = cfg["datasets"][DS]
    torch.manual_seed(7)
    teacher = build_unet(ds["unet"], ds["data"])
    s = method_settings(ds["unlearn"], method, DS)
    return Unlearner(teacher, ds["diffusion"], s, class_task(s, 10, teacher), 0)


def random_grads(seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(*shape, generator=g) * scale
            for shape, scale in (((40, 30), 1.0), ((30,), 100.0), ((7, 3, 3, 3), 0.01), ((1,), 1.0))]


@pytest.mark.parametrize("ratio", [0.5, 0.3, 0.9])
def test_global_mask_keeps_the_top_fraction(ratio):
    grads = random_grads()
    masks = top_ratio_mask(grads, ratio, "global")
    n = sum(g.numel() for g in grads)
    assert sum(int(m.sum()) for m in masks) == round(ratio * n)
    assert density(masks) == pytest.approx(round(ratio * n) / n)
    kept = torch.cat([g.abs()[m] for g, m in zip(grads, masks)])
    dropped = torch.cat([g.abs()[~m] for g, m in zip(grads, masks)])
    assert kept.min() >= dropped.max()
    if ratio <= 0.5:  # one threshold over all tensors: the large-scale tensor kept whole, the tiny one dropped
        assert masks[1].all() and not masks[2].any()


@pytest.mark.parametrize("ratio", [0.5, 0.25])
def test_per_layer_mask_keeps_the_fraction_in_every_tensor(ratio):
    grads = random_grads(1)
    masks = top_ratio_mask(grads, ratio, "per_layer")
    for g, m in zip(grads, masks):
        k = max(1, round(ratio * g.numel()))
        assert int(m.sum()) == k
        if k < g.numel():
            assert g.abs()[m].min() >= g.abs()[~m].max()


def test_saliency_gradient_is_the_gradient_of_the_plain_denoising_loss():
    torch.manual_seed(0)
    data = {"resolution": 8, "channels": 1, "num_classes": 10}
    unet = build_unet({"base_channels": 8, "channel_mult": [1, 2], "layers_per_block": 1,
                       "attention_resolutions": [], "dropout": 0.0, "norm_num_groups": 4}, data)
    sched = Schedule(make_scheduler({}))
    g = torch.Generator().manual_seed(3)
    x, eps = torch.randn(3, 1, 8, 8, generator=g), torch.randn(3, 1, 8, 8, generator=g)
    t, c = torch.tensor([40, 300, 700]), torch.zeros(3, dtype=torch.long)
    params = list(unet.parameters())
    loss, grads = saliency_gradients(unet, sched, x, t, eps, ClassCondition(c), params)
    abar = torch.cumprod(1 - torch.linspace(1e-4, 0.02, 1000), 0)
    ref = 0.0
    for i in range(3):
        z = abar[t[i]].sqrt() * x[i] + (1 - abar[t[i]]).sqrt() * eps[i]
        ref = ref + ((eps[i] - unet(z[None], t[i:i + 1], class_labels=c[i:i + 1]).sample[0]) ** 2).sum() / 3
    ref_grads = torch.autograd.grad(ref, params, allow_unused=True)
    assert loss == pytest.approx(ref.item(), rel=1e-4)
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, torch.zeros_like(a) if b is None else b, rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize("apply_to", ["forget", "all"])
def test_mask_once_with_forget_only_loss_moves_only_masked_parameters(apply_to):
    m = f"datasets.{DS}.unlearn.methods.pecker"
    unl = make_unlearner("pecker", f"{m}.lam_theta=0.0", f"{m}.mask.refresh=once", f"{m}.mask.apply_to={apply_to}",
                         f"{m}.mask.ratio=0.3")
    before = [p.detach().clone() for p in unl.params]
    rows = [unl.train_step() for _ in range(3)]
    assert [r["mask_refreshed"] for r in rows] == [1, 0, 0]
    assert all(r["mask_density"] == pytest.approx(0.3, abs=1e-4) for r in rows)
    moved = kept_moved = 0
    for p0, p1, mask in zip(before, unl.params, unl.mask.masks):
        assert torch.equal(p0[~mask], p1.detach()[~mask]), "an unmasked parameter moved"
        kept_moved += int((p0[mask] != p1.detach()[mask]).sum())
        moved += int(mask.sum())
    assert kept_moved > 0.5 * moved


def test_refresh_every_k_and_sfd_has_no_mask():
    m = f"datasets.{DS}.unlearn.methods.pecker"
    unl = make_unlearner("pecker", f"{m}.mask.refresh=every_k", f"{m}.mask.refresh_every=2",
                         f"{m}.mask.scope=per_layer")
    rows = [unl.train_step() for _ in range(5)]
    assert [r["mask_refreshed"] for r in rows] == [1, 0, 1, 0, 1]
    assert rows[0]["mask_density"] == pytest.approx(0.5, abs=0.01)
    sfd = make_unlearner("sfd")
    row = sfd.train_step()
    assert sfd.mask is None and row["mask_refreshed"] == 0 and row["mask_density"] == 1.0


def test_mask_with_everything_kept_equals_sfd():
    """ratio 1 keeps every parameter: the PECKER update must then equal the unmasked (SFD) update."""
    m = f"datasets.{DS}.unlearn.methods"
    common = [f"{m}.sfd.mu_psi=1.0", f"{m}.sfd.mu_theta=1.0", f"{m}.pecker.mask.ratio=1.0"]
    a = make_unlearner("sfd", *common)
    b = make_unlearner("pecker", *common)
    c_r, c_f, c_o = a.draw_conditions()
    b.draw_conditions()
    torch.manual_seed(1)  # dropout draws from the global RNG the two share
    a.psi_step(c_r, c_f)
    torch.manual_seed(1)
    _, x_f = b.psi_step(c_r, c_f)
    rng_state = b.rng.get_state()
    b.refresh_mask(x_f)  # draws t and eps: rewind so both theta steps see the same draws
    b.rng.set_state(rng_state)
    assert b.mask.density == 1.0
    torch.manual_seed(2)
    a.theta_step(c_r, c_f, c_o)
    torch.manual_seed(2)
    b.theta_step(c_r, c_f, c_o)
    for p, q in zip(a.params, b.params):
        torch.testing.assert_close(p, q, rtol=0, atol=0)


@pytest.mark.parametrize("source", ["teacher", "real"])
def test_mask_sources_teacher_and_real(source, tmp_path):
    import numpy as np

    from pecker import io
    from pecker.unlearn.mask import build_pool

    m = f"datasets.{DS}.unlearn.methods.pecker.mask"
    cfg = C.resolve([C.REPO_ROOT / "config" / "test.yaml"],
                    [*TINY, f"{m}.source={source}", f"{m}.teacher_pool=3", f"{m}.teacher_sampling_steps=2",
                     f"{m}.batch_size=2"])
    ds = cfg["datasets"][DS]
    s = method_settings(ds["unlearn"], "pecker", DS)
    labels = np.array([0, 1, 0, 2, 0])
    images = (np.arange(5 * 8 * 8).reshape(5, 8, 8, 1) % 255).astype(np.uint8)
    io.save_npz(tmp_path / "train.npz", images=images, labels=labels)
    io.atomic_write_json(tmp_path / "meta.json", {"source": "test"})
    torch.manual_seed(0)
    teacher = build_unet(ds["unet"], ds["data"])
    task = class_task(s, 10, teacher)
    pool = build_pool(s, ds, teacher, task.forget, 0, "cpu", tmp_path)
    assert pool.shape == (3, 1, 8, 8)
    if source == "real":
        torch.testing.assert_close(pool, torch.as_tensor(images[labels == 0]).permute(0, 3, 1, 2).float() / 127.5 - 1)
    unl = Unlearner(teacher, ds["diffusion"], s, task, 0, mask_pool=pool)
    row = unl.train_step()
    assert row["mask_refreshed"] == 1 and row["mask_density"] == pytest.approx(0.5, abs=1e-4)


def test_generator_source_with_its_own_batch_draws_fresh_samples():
    """mask.batch_size != forget batch: the mask draws its own no-grad generator samples of c_f."""
    m = f"datasets.{DS}.unlearn.methods.pecker.mask"
    unl = make_unlearner("pecker", f"{m}.batch_size=3")
    calls = []
    unl.gen.unet.register_forward_pre_hook(
        lambda mod, args, kw: calls.append((len(args[0]), mod.training, torch.is_grad_enabled(),
                                            kw["class_labels"].tolist())), with_kwargs=True)
    row = unl.train_step()
    assert row["mask_refreshed"] == 1
    # psi-step samples (4 + 4), mask samples (3, eval, no grad, forget class), saliency pass (3), theta step
    assert calls[1] == (3, False, False, [0, 0, 0]) and calls[2][0] == 3 and calls[2][2]
