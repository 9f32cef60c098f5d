"""Training numerics as an explicit config choice (pecker/diffusion/precision.py): float32 and
contiguous by default, bfloat16 autocast and channels-last only when asked, both in the stage hash
and in every sidecar; and gradient checkpointing, which changes memory but not the numbers."""

from __future__ import annotations

import pytest
import torch

from pecker import config as C
from pecker import io
from pecker import workflow as W
from pecker.diffusion.precision import Precision
from pecker.diffusion.train import train_teacher
from tests.helpers import tiny_config, tiny_dataset
from tests.test_unlearn_generator import make_unlearner

DS = "mnist-tiny"
TEST_YAML = C.REPO_ROOT / "config" / "test.yaml"


def _hashes(*overrides):
    cfg = C.resolve([TEST_YAML], list(overrides))
    return (W.stage_hash(cfg, DS, "teacher"), W.stage_hash(cfg, DS, "unlearn", method="pecker", seed=0))


def test_absent_precision_is_float32_and_keeps_the_hashes():
    assert Precision.from_config(None, "x") == Precision("float32", False)
    base = _hashes()
    # spelling out the defaults is the same run in float32, but a different config: only an absent key
    # keeps the hashes of configs written before the option existed
    assert _hashes(f"datasets.{DS}.unlearn.precision.autocast=bfloat16")[0] == base[0]
    assert _hashes(f"datasets.{DS}.unlearn.precision.autocast=bfloat16")[1] != base[1]
    assert _hashes(f"datasets.{DS}.teacher.precision.channels_last=true")[0] != base[0]
    assert _hashes(f"datasets.{DS}.unlearn.methods.pecker.precision.autocast=bfloat16")[1] != base[1]


def test_unknown_autocast_dtype_is_refused_naming_the_key():
    with pytest.raises(C.ConfigError, match="precision"):
        C.resolve([TEST_YAML], [f"datasets.{DS}.unlearn.precision.autocast=float16"])


def test_float32_context_is_a_no_op_and_bfloat16_autocasts_the_forward_pass():
    lin = torch.nn.Linear(4, 4)
    x = torch.randn(2, 4)
    with Precision().forward("cpu"):
        assert lin(x).dtype == torch.float32
    with Precision(autocast="bfloat16").forward("cpu"):
        assert lin(x).dtype == torch.bfloat16


def _one_step(precision: dict | None, method="pecker", *extra):
    overrides = [] if precision is None else [
        f"datasets.{DS}.unlearn.precision.{k}={str(v).lower()}" for k, v in precision.items()]
    unl, _ = make_unlearner(method, *overrides, *extra)
    before = [p.detach().clone() for p in unl.params]
    row = unl.train_step()
    delta = torch.cat([(p.detach() - b).flatten() for p, b in zip(unl.params, before)])
    return unl, row, delta


def test_bfloat16_step_keeps_float32_state_and_stays_close_to_float32():
    _, ref, d_ref = _one_step(None)
    unl, row, d = _one_step({"autocast": "bfloat16"})
    assert all(p.dtype == torch.float32 for p in unl.params) and all(e.dtype == torch.float32 for e in unl.ema)
    assert all(p.dtype == torch.float32 for p in unl.psi.parameters())
    # denoising losses (psi step, saliency): bfloat16 rounding of one network's output, well under 1%
    for key in ("loss_psi", "loss_saliency", "grad_norm_theta"):
        assert row[key] == pytest.approx(ref[key], rel=0.01), key
        assert row[key] != ref[key], f"{key}: bfloat16 left the numbers unchanged (autocast not applied)"
    # the SiD loss multiplies Q = x_phi - x_psi, the difference of two networks that are nearly equal
    # at step 1 (psi is a copy of the teacher): bfloat16's 2^-8 rounding is a large share of it
    # (measured: 0.449 vs 0.517 here, +15%; SFD's 2.11 vs 2.17)
    assert row["loss_theta"] == pytest.approx(ref["loss_theta"], rel=0.3)
    # the first Adam step is close to lr * sign(grad): small entries may flip sign (measured cos 0.87)
    cos = torch.nn.functional.cosine_similarity(d, d_ref, dim=0)
    assert cos > 0.6, float(cos)


def test_channels_last_step_matches_contiguous_and_saves(tmp_path):
    no_dropout = f"datasets.{DS}.unet.dropout=0"  # dropout fills its mask in memory order: other draws
    _, ref, d_ref = _one_step(None, "sfd", no_dropout)
    unl, row, d = _one_step({"channels_last": True}, "sfd", no_dropout)
    assert unl.precision.describe() == {"autocast": "float32", "channels_last": True}
    conv = next(m for m in unl.gen.unet.modules() if isinstance(m, torch.nn.Conv2d) and m.in_channels > 1)
    assert conv.weight.is_contiguous(memory_format=torch.channels_last) and not conv.weight.is_contiguous()
    # float32 either way, only the convolutions' order of summation differs (measured: loss_theta
    # 2.181710 vs 2.181712, update cosine 0.99997)
    for key in ("loss_psi", "loss_theta", "grad_norm_theta"):
        assert row[key] == pytest.approx(ref[key], rel=1e-5), key
    assert torch.nn.functional.cosine_similarity(d, d_ref, dim=0) > 0.999
    tensors, meta = unl.state()
    io.save_checkpoint(tmp_path / "state", tensors, meta)  # safetensors needs contiguous tensors
    again, _ = make_unlearner("sfd", f"datasets.{DS}.unlearn.precision.channels_last=true")
    loaded, lmeta = io.load_checkpoint(tmp_path / "state")
    again.load_state(loaded, lmeta)
    assert again.train_step()["step"] == 2


def test_teacher_under_bfloat16_records_its_precision(tmp_path):
    data = tiny_dataset(tmp_path)
    kw = dict(steps=2, batch_size=8, checkpoint_every=2, log_every=1, lr=1e-3)
    ref = train_teacher(tiny_config(**kw), data, tmp_path / "f32", torch.device("cpu"))
    side = train_teacher(tiny_config(**kw, precision={"autocast": "bfloat16"}), data, tmp_path / "bf16",
                         torch.device("cpu"))
    assert ref["precision"] == {"autocast": "float32", "channels_last": False}
    assert side["precision"] == {"autocast": "bfloat16", "channels_last": False}
    assert side["config_hash"] != ref["config_hash"]
    a, _ = io.load_checkpoint(tmp_path / "f32" / "model")
    b, _ = io.load_checkpoint(tmp_path / "bf16" / "model")
    assert all(v.dtype == torch.float32 for v in b.values())
    assert any(not torch.equal(a[k], b[k]) for k in a)


def test_gradient_checkpointing_gives_the_same_run_and_keeps_the_hash():
    """Memory, not numerics: two iterations (dropout 0.1, PECKER's mask) with the UNets' activations
    recomputed in the backward pass equal the plain ones exactly; the stage hash is unchanged."""
    on = f"datasets.{DS}.unlearn.gradient_checkpointing=true"
    assert _hashes(on) == _hashes()
    runs = []
    for extra in ((), (on,)):
        unl, _ = make_unlearner("pecker", *extra)
        rows = [unl.train_step() for _ in range(2)]
        runs.append((unl, rows))
    (a, rows_a), (b, rows_b) = runs
    assert any(getattr(m, "gradient_checkpointing", False) for m in b.psi.modules())
    assert not any(getattr(m, "gradient_checkpointing", False) for m in a.psi.modules())
    for ra, rb in zip(rows_a, rows_b):
        for key in ("loss_psi", "loss_theta", "loss_saliency", "grad_norm_theta"):
            assert ra[key] == rb[key], key
    for pa, pb in zip(a.params, b.params):
        assert torch.equal(pa, pb)


def test_gradient_checkpointing_is_refused_for_a_network_without_it():
    from pecker.diffusion.ddpm_conditional import DDPMConditionalUNet
    from pecker.diffusion.unet import enable_gradient_checkpointing

    with pytest.raises(C.ConfigError, match="unlearn.gradient_checkpointing"):
        enable_gradient_checkpointing(torch.nn.Linear(2, 2), "unlearn.gradient_checkpointing")
    assert not getattr(DDPMConditionalUNet, "_supports_gradient_checkpointing", False)


def test_micro_batches_give_the_full_batch_update():
    """unlearn.accumulate = 2 (micro-batches of 4 + 4 of the CI's 8 + 8) without dropout equals one
    full batch to float rounding, PECKER's mask included; it enters the hash; a k that does not
    divide the batch is refused before the first step, naming the key."""
    no_dropout = f"datasets.{DS}.unet.dropout=0"
    acc = f"datasets.{DS}.unlearn.accumulate=2"
    assert _hashes(acc)[1] != _hashes()[1]
    runs = []
    for extra in ((no_dropout,), (no_dropout, acc)):
        unl, _ = make_unlearner("pecker", *extra)
        rows = [unl.train_step() for _ in range(2)]
        runs.append((unl, rows))
    (a, rows_a), (b, rows_b) = runs
    # measured: the denoising losses and gradient norms agree to 1e-6; the SiD loss to 2e-7 at step 1
    # and 1.6e-4 at step 2 (its cancellation, see above); weights to 1.7e-5 after two Adam steps
    for ra, rb in zip(rows_a, rows_b):
        for key in ("loss_psi", "loss_saliency", "grad_norm_theta", "grad_norm_psi"):
            assert rb[key] == pytest.approx(ra[key], rel=1e-5), key
        assert rb["loss_theta"] == pytest.approx(ra["loss_theta"], rel=1e-3)
    assert max(float((pa - pb).detach().abs().max()) for pa, pb in zip(a.params, b.params)) < 1e-4
    with pytest.raises(C.ConfigError, match="unlearn.accumulate.*3"):
        make_unlearner("sfd", f"datasets.{DS}.unlearn.accumulate=3")
