"""SA's class-conditional DDPM network (pecker.diffusion.ddpm_conditional) and the safe conversion of
its published checkpoints (pecker.diffusion.published); docs/published-teachers.md."""

from __future__ import annotations

import hashlib
import json
import pickle

import pytest
import torch

from pecker import io
from pecker.diffusion import published
from pecker.diffusion.conditioning import ClassCondition, class_condition
from pecker.diffusion.ddpm_conditional import CIFAR10, N_PARAMS, STL10, DDPMConditionalUNet
from pecker.diffusion.published import convert_published
from pecker.diffusion.unet import load_unet
from pecker.diffusion.unet import n_params, null_label

SMALL = {"ch": 32, "ch_mult": [1, 2], "num_res_blocks": 1, "attn_resolutions": [8], "dropout": 0.1,
         "resolution": 16, "in_channels": 3, "out_ch": 3, "num_classes": 10, "resamp_with_conv": True}

# Frozen from the official module (clear-nus/selective-amnesia @ b736571, ddpm/models/diffusion.py,
# Conditional_Model with ddpm/configs/{cifar10,stl10}_train.yml), instantiated once offline:
# parameter count, number of state-dict keys, sha256 of "key:shape" lines in state-dict order.
OFFICIAL = {
    "cifar10": (CIFAR10, 38_632_323, 334, "84a94dc602dd3bdddb7e9e1f2f5c3b4704760fc522bcf9da9fffe02656a61211"),
    "stl10": (STL10, 83_159_683, 396, "2a307deb705aef388f1c2e421399f3c8405069bd08121ce43c397448fc52ed09"),
}
# Representative keys of the official CIFAR-10 state dict (without the DataParallel "module." prefix).
CIFAR10_KEYS = {
    "null_classes_emb": (128,),
    "classes_emb.weight": (10, 128),
    "temb.dense.0.weight": (512, 128),
    "temb.dense.1.weight": (512, 512),
    "cemb.dense.0.weight": (512, 128),
    "cemb.dense.1.bias": (512,),
    "conv_in.weight": (128, 3, 3, 3),
    "down.0.block.0.temb_cemb_proj.weight": (128, 1024),
    "down.0.downsample.conv.weight": (128, 128, 3, 3),
    "down.1.block.0.nin_shortcut.weight": (256, 128, 1, 1),
    "down.1.attn.1.q.weight": (256, 256, 1, 1),
    "mid.attn_1.proj_out.weight": (256, 256, 1, 1),
    "mid.block_2.temb_cemb_proj.weight": (256, 1024),
    "up.0.block.0.conv1.weight": (128, 384, 3, 3),
    "up.0.block.2.nin_shortcut.weight": (128, 256, 1, 1),
    "up.1.attn.2.norm.weight": (256,),
    "up.3.upsample.conv.weight": (256, 256, 3, 3),
    "norm_out.weight": (128,),
    "conv_out.weight": (3, 128, 3, 3),
}


def layout_digest(state) -> str:
    canon = "\n".join(f"{k}:{'x'.join(map(str, v.shape))}" for k, v in state.items())
    return hashlib.sha256(canon.encode()).hexdigest()


@pytest.fixture(scope="module")
def cifar10_net():
    return DDPMConditionalUNet(CIFAR10)


def small_net(seed=0):
    torch.manual_seed(seed)
    return DDPMConditionalUNet(SMALL).eval()


def test_parameter_counts_match_the_official_network(cifar10_net):
    assert n_params(cifar10_net) == OFFICIAL["cifar10"][1] == N_PARAMS["cifar10"]  # 38.63M
    assert round(n_params(cifar10_net) / 1e6, 2) == 38.63
    assert list(cifar10_net.buffers()) == []
    assert N_PARAMS["stl10"] == OFFICIAL["stl10"][1]  # 83.16M (instantiated in the layout test below)


@pytest.mark.parametrize("name", ["cifar10", "stl10"])
def test_state_dict_layout_is_the_official_one(name, cifar10_net):
    cfg, count, nkeys, digest = OFFICIAL[name]
    net = cifar10_net if name == "cifar10" else DDPMConditionalUNet(cfg)
    sd = net.state_dict()
    assert len(sd) == nkeys and n_params(net) == count
    assert layout_digest(sd) == digest
    if name == "cifar10":
        for key, shape in CIFAR10_KEYS.items():
            assert tuple(sd[key].shape) == shape, key


def test_published_layout_loads_strictly(cifar10_net):
    """A state dict built from the frozen key spec (as SA saves it: DataParallel prefix) loads with
    strict=True after the prefix is stripped; a missing or extra key is refused."""
    ref = cifar10_net.state_dict()
    g = torch.Generator().manual_seed(1)
    raw = {f"module.{k}": torch.randn(v.shape, generator=g) for k, v in ref.items()}
    assert all(tuple(raw[f"module.{k}"].shape) == s for k, s in CIFAR10_KEYS.items())
    state, desc = published.published_state_dict([raw, {"state": {}, "param_groups": []}, 799_999], "raw")
    assert desc["step"] == 799_999 and set(state) == set(ref)
    cifar10_net.load_state_dict(state, strict=True)
    assert torch.equal(cifar10_net.null_classes_emb, raw["module.null_classes_emb"])
    with pytest.raises(RuntimeError):
        cifar10_net.load_state_dict({k: v for k, v in state.items() if k != "conv_out.bias"}, strict=True)
    with pytest.raises(RuntimeError):
        cifar10_net.load_state_dict({**state, "logvar": torch.zeros(1000)}, strict=True)


def test_interface_config_and_null_label():
    net = small_net()
    assert net.config.num_class_embeds == 11 and null_label(net) == 10
    assert net.config.sample_size == 16 and net.config.in_channels == 3
    assert net.config["arch"] == "ddpm_conditional"
    cond = class_condition(net, torch.tensor([1, 2]))
    assert cond.null == 10
    z = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        out = net(z, torch.tensor([3, 700]), class_labels=torch.tensor([0, 10]))
        assert out.sample.shape == z.shape
        (tup,) = net(z, 5, class_labels=torch.tensor([0, 10]), return_dict=False)  # scalar timestep
        assert torch.equal(tup, net(z, torch.tensor([5, 5]), class_labels=torch.tensor([0, 10])).sample)
    with pytest.raises(ValueError):
        net(z, torch.tensor([3, 7]))


def test_null_label_selects_the_null_embedding():
    net = small_net()
    z, t = torch.randn(2, 3, 16, 16), torch.tensor([100, 600])
    null = torch.full((2,), 10)
    with torch.no_grad():
        before = net(z, t, class_labels=null).sample
        net.classes_emb.weight.add_(1.0)  # the class table does not reach the null prediction
        assert torch.equal(net(z, t, class_labels=null).sample, before)
        net.null_classes_emb.add_(1.0)
        assert not torch.allclose(net(z, t, class_labels=null).sample, before)
        with pytest.raises(IndexError):
            net(z, t, class_labels=torch.tensor([11, 0]))


def test_forward_is_deterministic_and_guidance_is_the_official_mix():
    net = small_net()
    z, t = torch.randn(3, 3, 16, 16), torch.tensor([10, 500, 990])
    labels = torch.tensor([0, 4, 9])
    w = 2.0  # the official cond_scale of the SA evaluation
    with torch.no_grad():
        a = net(z, t, class_labels=labels).sample
        b = net(z, t, class_labels=labels).sample
        assert torch.equal(a, b)  # eval mode: dropout off
        eps_c = a
        eps_null = net(z, t, class_labels=torch.full((3,), 10)).sample
        guided = ClassCondition(labels, null=null_label(net), guidance=1.0 + w).eps(net, z, t)
        unguided = ClassCondition(labels, null=10).eps(net, z, t)
    hand = (1 + w) * eps_c - w * eps_null
    assert torch.allclose(guided, hand, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(guided, eps_c, atol=1e-3)
    assert torch.equal(unguided, eps_c)
    net.train()
    with torch.no_grad():
        assert not torch.equal(net(z, t, class_labels=labels).sample, a)  # dropout 0.1 active in train mode


def _published_file(tmp_path, net: DDPMConditionalUNet, with_ema=True):
    """A checkpoint in SA's layout: [DataParallel model state, Adam state, step, EMA shadow]."""
    opt = torch.optim.Adam(net.parameters(), lr=2e-4)
    net.train()
    out = net(torch.randn(2, 3, 16, 16), torch.tensor([1, 2]), class_labels=torch.tensor([0, 10])).sample
    out.square().mean().backward()
    opt.step()
    net.eval()
    raw = {f"module.{k}": v.clone() for k, v in net.state_dict().items()}
    g = torch.Generator().manual_seed(7)
    ema = {k: p.detach() + 0.01 * torch.randn(p.shape, generator=g) for k, p in net.named_parameters()}
    states = [raw, opt.state_dict(), 799_999] + ([ema] if with_ema else [])
    path = tmp_path / "ckpt.pth"
    torch.save(states, path)
    return path, raw, ema


def test_wrong_checksum_is_refused_before_unpickling(tmp_path, monkeypatch):
    net = small_net()
    path, _, _ = _published_file(tmp_path, net)
    good = io.sha256_file(path)
    loads = []
    real_load = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: loads.append(1) or real_load(*a, **k))
    monkeypatch.setattr(pickle, "load", lambda *a, **k: pytest.fail("pickle.load called"))
    wrong = "0" * 64
    with pytest.raises(io.ChecksumError) as exc:
        convert_published(path, wrong, tmp_path / "out", SMALL)
    msg = str(exc.value)
    assert "\n" not in msg and path.name in msg and wrong in msg and good in msg
    with pytest.raises(ValueError):  # a hash prefix is not accepted
        convert_published(path, good[:16], tmp_path / "out", SMALL)
    assert loads == [] and not (tmp_path / "out.safetensors").exists()
    # a truncated file (right hash of the original) is refused too
    trunc = tmp_path / "trunc.pth"
    trunc.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(io.ChecksumError):
        convert_published(trunc, good, tmp_path / "out", SMALL)
    assert loads == []
    convert_published(path, good, tmp_path / "out", SMALL)
    assert loads == [1]


class _Trap:
    """Unpickling this object would run ``_TRIPPED.append`` (the attack a checksum gate must stop)."""

    def __reduce__(self):
        return (_TRIPPED.append, ("unpickled",))


_TRIPPED: list = []


def test_malicious_pickle_is_never_executed(tmp_path):
    path = tmp_path / "evil.pth"
    path.write_bytes(pickle.dumps([_Trap()], protocol=2))
    with pytest.raises(io.ChecksumError):
        convert_published(path, "f" * 64, tmp_path / "out", SMALL)
    assert _TRIPPED == []
    # even with the right hash, weights_only refuses to run it
    with pytest.raises(pickle.UnpicklingError):
        convert_published(path, io.sha256_file(path), tmp_path / "out", SMALL)
    assert _TRIPPED == []


@pytest.mark.parametrize("which", ["ema", "raw"])
def test_round_trip_is_bit_identical(tmp_path, which):
    net = small_net()
    path, raw, ema = _published_file(tmp_path, net)
    digest = io.sha256_file(path)
    st = convert_published(path, digest, tmp_path / f"teacher_{which}", SMALL, which=which)
    assert st == tmp_path / f"teacher_{which}.safetensors"
    model, meta = load_unet(tmp_path / f"teacher_{which}")
    expected = ema if which == "ema" else {k[len("module."):]: v for k, v in raw.items()}
    sd = model.state_dict()
    assert set(sd) == set(expected)
    assert all(torch.equal(sd[k], expected[k]) for k in expected)
    side = json.loads((tmp_path / f"teacher_{which}.json").read_text())
    assert side["network"] == meta["network"] == "ddpm_conditional" and side["origin"] == meta["origin"]
    assert meta["kind"] == "teacher" and meta["weights"] == which
    assert meta["n_params"] == n_params(model) and meta["arch_config"]["ch"] == 32
    assert meta["origin"] == {"file": "ckpt.pth", "sha256": digest, "which": which, "step": 799_999,
                              "layout": "sa_list[model_state, optimizer_state, step, ema_state]"}
    ref = DDPMConditionalUNet(SMALL).eval()
    ref.load_state_dict(expected, strict=True)
    model.eval()
    z, t, c = torch.randn(2, 3, 16, 16), torch.tensor([0, 999]), torch.tensor([3, 10])
    with torch.no_grad():
        assert torch.equal(model(z, t, class_labels=c).sample, ref(z, t, class_labels=c).sample)


def test_missing_ema_and_foreign_layouts_are_refused(tmp_path):
    net = small_net()
    path, _, _ = _published_file(tmp_path, net, with_ema=False)
    with pytest.raises(ValueError, match="no EMA"):
        convert_published(path, io.sha256_file(path), tmp_path / "out", SMALL, which="ema")
    convert_published(path, io.sha256_file(path), tmp_path / "out", SMALL, which="raw")
    with pytest.raises(ValueError, match="not an SA DDPM checkpoint"):
        published.published_state_dict({"state_dict": net.state_dict()}, "raw")
    io.save_checkpoint(tmp_path / "kind", net.state_dict(), {"kind": "unet", "network": "other"})
    with pytest.raises(io.IntegrityError, match="unknown network 'other'"):
        load_unet(tmp_path / "kind")
