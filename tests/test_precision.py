"""Training numerics as an explicit config choice (pecker/diffusion/precision.py): float32 and
contiguous by default, bfloat16 autocast and channels-last only when asked, both in the stage hash
and in every sidecar; and gradient checkpointing, which changes memory but not the numbers."""

from __future__ import annotations

import math

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


def test_pure_weights_are_refused_with_autocast_and_outside_the_sfd_loop():
    with pytest.raises(C.ConfigError, match="unlearn.precision.*exclude each other"):
        Precision.from_config({"weights": "float16", "autocast": "bfloat16"}, "unlearn.precision", pure=True)
    with pytest.raises(C.ConfigError, match="teacher.precision.weights"):
        Precision.from_config({"weights": "float16"}, "teacher.precision")
    with pytest.raises(C.ConfigError, match="weights"):
        C.resolve([TEST_YAML], [f"datasets.{DS}.unlearn.precision.weights=float64"])
    assert _hashes(f"datasets.{DS}.unlearn.precision.weights=float16")[1] != _hashes()[1]


def test_network_inputs_follow_the_weights_dtype():
    from pecker.diffusion.conditioning import as_input

    x = torch.randn(2, 3)
    unl, _ = make_unlearner("sfd")
    assert as_input(unl.psi, x) is x  # float32 weights: the tensor itself (bit-identical default)
    assert as_input(unl.psi.to(torch.float16), x).dtype == torch.float16
    labels = torch.zeros(2, dtype=torch.long)
    assert as_input(unl.psi, labels) is labels
    assert as_input(torch.nn.Linear(2, 2), x) is x  # no dtype attribute: left alone


def _psi_gradient_and_step(*overrides):
    """One PECKER iteration (dropout off); returns the Unlearner, its log row and the fake score's
    gradient as the optimiser saw it (float32 copy)."""
    unl, _ = make_unlearner("pecker", f"datasets.{DS}.unet.dropout=0", *overrides)
    seen = {}
    step = unl.opt_psi.step

    def spy():
        seen["g"] = torch.cat([p.grad.float().flatten() for p in unl.psi.parameters()])
        step()

    unl.opt_psi.step = spy
    row = unl.train_step()
    return unl, row, seen["g"]


def test_float16_weights_need_an_adam_eps_that_float16_can_hold():
    """eps 1e-8 is 0 in float16: Adam's 0 / 0 on gradient-free parameters turned the fake score NaN
    in one step (seen here); refused early, naming the key."""
    with pytest.raises(C.ConfigError, match="unlearn.adam_eps.*float16"):
        make_unlearner("sfd", f"datasets.{DS}.unlearn.precision.weights=float16", f"datasets.{DS}.unlearn.adam_eps=1.0e-8")


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_pure_low_precision_step_keeps_everything_in_that_dtype_and_resumes(tmp_path, dtype):
    """The official SD code's numerics: weights, gradients, Adam moments and EMA in the low dtype,
    losses float32. The network passes agree with float32 (the fake score's gradient, cosine > 0.999);
    the updates do not, by design: an Adam step of lr 1e-4 is below the spacing of float16 / bfloat16
    values for most weights, so it is rounded (measured on this network: fake-score update cosine to
    float32 0.21 in float16, 0.57 in bfloat16). The state saves and resumes; the saved generator loads
    as a float32 network."""
    from pecker.diffusion.unet import load_unet
    from pecker.unlearn.generator import save_generator

    low = getattr(torch, dtype)
    eps = f"datasets.{DS}.unlearn.adam_eps=1.0e-6"  # the official float16 value (1e-8 is 0 in float16)
    _, ref, g_ref = _psi_gradient_and_step(eps)
    unl, row, g = _psi_gradient_and_step(eps, f"datasets.{DS}.unlearn.precision.weights={dtype}")
    assert unl.precision.describe()["weights"] == dtype
    assert all(p.dtype == low for p in unl.params) and all(e.dtype == low for e in unl.ema)
    assert all(p.dtype == low for p in unl.psi.parameters()) and all(p.dtype == low for p in unl.teacher.parameters())
    moments = [v for st in unl.opt_theta.state.values() for k, v in st.items() if k.startswith("exp_avg")]
    assert moments and all(m.dtype == low for m in moments)
    assert torch.nn.functional.cosine_similarity(g, g_ref, dim=0) > 0.999
    for key in ("loss_psi", "loss_saliency"):
        assert row[key] == pytest.approx(ref[key], rel=0.01), key
    assert all(math.isfinite(row[k]) for k in ("loss_theta", "grad_norm_theta"))
    assert all(bool(torch.isfinite(p).all()) for p in [*unl.params, *unl.psi.parameters()])
    tensors, meta = unl.state()
    io.save_checkpoint(tmp_path / "state", tensors, meta)
    again, _ = make_unlearner("pecker", f"datasets.{DS}.unet.dropout=0", eps, f"datasets.{DS}.unlearn.precision.weights={dtype}")
    loaded, lmeta = io.load_checkpoint(tmp_path / "state")
    again.load_state(loaded, lmeta)
    assert all(torch.equal(a, b) for a, b in zip(again.params, unl.params))
    assert math.isfinite(again.train_step()["loss_theta"])
    save_generator(tmp_path / "gen", again.gen, {}, state_dict=again.ema_state_dict())
    net, _ = load_unet(tmp_path / "gen")
    assert all(p.dtype == torch.float32 for p in net.parameters())


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
    assert unl.precision.describe() == {"autocast": "float32", "channels_last": True, "weights": "float32"}
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
    assert ref["precision"] == {"autocast": "float32", "channels_last": False, "weights": "float32"}
    assert side["precision"] == {"autocast": "bfloat16", "channels_last": False, "weights": "float32"}
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
