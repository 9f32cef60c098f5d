import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pecker import io
from pecker.runs import ResumeRefused
from pecker.diffusion.sample import class_labels, sample_batch
from pecker.diffusion.schedule import Schedule, make_scheduler
from pecker.diffusion.train import train_teacher
from pecker.diffusion.unet import build_unet, load_unet, null_label, save_unet
from tests.helpers import tiny_config, tiny_dataset


def test_schedule_matches_method_md():
    sched = Schedule(make_scheduler({}))
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    abar = torch.cumprod(1 - betas, 0)
    assert torch.allclose(sched.a.double(), abar.sqrt(), atol=1e-6)
    assert torch.allclose(sched.s.double(), (1 - abar).sqrt(), atol=1e-6)
    assert sched.sigma(440) == pytest.approx(2.5, abs=0.02)  # docs/method.md: t_init 440 <-> sigma 2.5
    x, eps, t = torch.randn(2, 1, 4, 4), torch.randn(2, 1, 4, 4), torch.tensor([10, 900])
    z = sched.noise(x, t, eps)
    assert torch.allclose(sched.x0_from_eps(z, t, eps), x, atol=1e-4)


def test_unet_is_class_conditional_with_null_label(tmp_path):
    ds = tiny_config()
    model = build_unet(ds["unet"], ds["data"]).eval()
    assert null_label(model) == 10
    z, t = torch.randn(2, 1, 8, 8), torch.tensor([500, 500])
    out_a = model(z, t, class_labels=torch.tensor([0, 0])).sample
    out_b = model(z, t, class_labels=torch.tensor([3, 10])).sample
    assert out_a.shape == z.shape and not torch.allclose(out_a, out_b)
    save_unet(tmp_path / "u", model, {"step": 1})
    model2, meta = load_unet(tmp_path / "u")
    assert meta["step"] == 1
    assert torch.equal(model2.eval()(z, t, class_labels=torch.tensor([0, 0])).sample, out_a)


def test_teacher_loss_is_epsilon_mse():
    """One training step's loss equals the plain formula ||eps - eps_phi(a x + s eps, t, c)||^2 (mean)."""
    ds = tiny_config()
    model = build_unet(ds["unet"], ds["data"]).eval()
    sched = Schedule(make_scheduler(ds["diffusion"]))
    x, eps = torch.randn(3, 1, 8, 8), torch.randn(3, 1, 8, 8)
    t, c = torch.tensor([0, 500, 999]), torch.tensor([1, 2, 10])
    abar = make_scheduler(ds["diffusion"]).alphas_cumprod[t].view(-1, 1, 1, 1)
    z_ref = abar.sqrt() * x + (1 - abar).sqrt() * eps
    assert torch.allclose(sched.noise(x, t, eps), z_ref, atol=1e-6)
    with torch.no_grad():
        pred = model(z_ref, t, class_labels=c).sample
    assert F.mse_loss(pred, eps) == pytest.approx(((pred - eps) ** 2).mean().item())


def test_exact_resume(tmp_path):
    data = tiny_dataset(tmp_path)
    ds = tiny_config(steps=4, batch_size=8, checkpoint_every=2, log_every=1, ema_decay=0.9, lr=1e-3)
    full = tmp_path / "full"
    train_teacher(ds, data, full, torch.device("cpu"))
    part = tmp_path / "part"
    out = train_teacher(ds, data, part, torch.device("cpu"), max_steps=2)
    assert out == {"step": 2, "finished": False}
    assert not (part / "ema.json").exists()
    train_teacher(ds, data, part, torch.device("cpu"))
    for name in ("model", "ema"):
        a, _ = io.load_checkpoint(full / name)
        b, _ = io.load_checkpoint(part / name)
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]), f"{name}.{k} differs after resume"
    rows_full = (full / "log.csv").read_text().splitlines()
    rows_part = (part / "log.csv").read_text().splitlines()
    assert [r.split(",")[:3] for r in rows_full] == [r.split(",")[:3] for r in rows_part]
    # the EMA differs from the raw weights, and the sidecar records what produced it
    meta = io.read_json(full / "ema.json")
    assert meta["weights"] == "ema" and meta["step"] == 4 and meta["provenance"]["config_hash"] == meta["config_hash"]


def test_resume_refuses_other_config(tmp_path):
    data = tiny_dataset(tmp_path)
    ds = tiny_config(steps=2, batch_size=8, checkpoint_every=1)
    train_teacher(ds, data, tmp_path / "run", torch.device("cpu"), max_steps=1)
    ds2 = tiny_config(steps=2, batch_size=8, checkpoint_every=1, lr=0.5)
    with pytest.raises(ResumeRefused, match="config hash"):
        train_teacher(ds2, data, tmp_path / "run", torch.device("cpu"))
    assert (tmp_path / "run" / "ckpt" / "step0000001" / "state.json").exists()
    # a longer run (steps, checkpointing and sampling are not part of the hash) resumes
    ds3 = tiny_config(steps=3, batch_size=8, checkpoint_every=1, sample={**ds["teacher"]["sample"], "per_class": 2})
    assert train_teacher(ds3, data, tmp_path / "run", torch.device("cpu"))["step"] == 3


@pytest.mark.parametrize("sampler", ["ddim", "ddpm"])
def test_sampling_is_seeded(sampler):
    ds = tiny_config()
    model = build_unet(ds["unet"], ds["data"]).eval()
    ddpm = make_scheduler(ds["diffusion"])
    labels = class_labels(10, 1)
    steps = 3
    if sampler == "ddpm":  # keep the 1000-step sampler cheap: 20 steps of a 20-step schedule
        ddpm = make_scheduler({**ds["diffusion"], "num_train_timesteps": 20})
    a = sample_batch(model, ddpm, labels, torch.Generator().manual_seed(1), sampler, steps, guidance_scale=2.0)
    b = sample_batch(model, ddpm, labels, torch.Generator().manual_seed(1), sampler, steps, guidance_scale=2.0)
    c = sample_batch(model, ddpm, labels, torch.Generator().manual_seed(2), sampler, steps, guidance_scale=2.0)
    assert a.shape == (10, 1, 8, 8) and torch.equal(a, b) and not torch.equal(a, c)
    assert np.isfinite(a.numpy()).all()
