"""unlearn.nan_guard (the official SD code's guard, docs/method.md section 3): non-finite generator
samples are dropped from both losses and non-finite gradient entries zeroed; off, nothing changes."""

from __future__ import annotations

import math

import pytest
import torch

from tests.test_unlearn_generator import DS, make_unlearner


def _poison(unl):
    """Make the generator's first sample of every call NaN (as a diverging fp16 generator would)."""
    forward = unl.gen.forward

    def poisoned(*args, **kwargs):
        out = forward(*args, **kwargs)
        return torch.cat([torch.full_like(out[:1], float("nan")), out[1:]])

    unl.gen.forward = poisoned


@pytest.mark.parametrize("method", ["sfd", "pecker"])
def test_the_guard_drops_nan_samples_and_keeps_every_weight_finite(method):
    unl, _ = make_unlearner(method, f"datasets.{DS}.unlearn.nan_guard=true")
    _poison(unl)
    row = unl.train_step()
    assert math.isfinite(row["loss_psi"]) and math.isfinite(row["loss_theta"])
    assert unl.nan_dropped > 0
    for net in (unl.gen.unet, unl.psi):
        assert all(bool(torch.isfinite(p).all()) for p in net.parameters())


def test_without_the_guard_a_nan_sample_stops_the_run():
    unl, _ = make_unlearner("sfd")
    _poison(unl)
    with pytest.raises(FloatingPointError, match="diverged"):
        unl.train_step()


def test_the_guard_changes_nothing_when_every_sample_is_finite():
    a, _ = make_unlearner("sfd")
    ra = a.train_step()  # before the next one is built: dropout draws from the global generator
    b, _ = make_unlearner("sfd", f"datasets.{DS}.unlearn.nan_guard=true")
    rb = b.train_step()
    for key in ("loss_psi", "loss_theta", "grad_norm_theta"):
        assert ra[key] == rb[key], key
    assert all(torch.equal(x, y) for x, y in zip(a.gen.unet.parameters(), b.gen.unet.parameters()))
