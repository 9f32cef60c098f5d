"""Converting a pickled diffusers UNet (SiD-LSG's ``dict(ema=unet)``) without running code from the
file (pecker/diffusion/pickled.py)."""

from __future__ import annotations

import pickle

import pytest
import torch
from diffusers import UNet2DConditionModel

from pecker import io
from pecker.diffusion import pickled
from pecker.diffusion.pickled import convert_pickled_unet, read_pickled_unet
from pecker.diffusion.unet import load_unet
from tests.helpers import Planted

TINY = dict(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(8, 16), layers_per_block=1,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=16, norm_num_groups=4, attention_head_dim=2)


def _pickle(tmp_path, obj, name="net.pkl"):
    path = tmp_path / name
    with open(path, "wb") as f:
        pickle.dump(obj, f)  # what SiD-LSG's save_data does
    return path, io.sha256_file(path)


def test_pickled_unet_converts_to_the_same_network(tmp_path):
    torch.manual_seed(0)
    unet = UNet2DConditionModel(**TINY).eval()
    path, sha = _pickle(tmp_path, {"ema": unet.half()})  # SiD-LSG's generators are stored in fp16
    out = convert_pickled_unet(path, sha, tmp_path / "gen", meta={"source": "sid_lsg"})
    assert out.name == "gen.safetensors"
    loaded, meta = load_unet(tmp_path / "gen")
    assert meta["kind"] == "converted_unet" and meta["source"] == "sid_lsg"
    assert meta["origin"] == {"file": "net.pkl", "sha256": sha, "key": "ema", "stored_dtypes": ["float16"],
                              "class": "diffusers.models.unets.unet_2d_condition.UNet2DConditionModel",
                              "n_tensors": len(unet.state_dict())}
    ref = unet.float().state_dict()
    got = loaded.state_dict()
    assert ref.keys() == got.keys() and all(torch.equal(ref[k], got[k]) for k in ref)
    z, t, h = torch.randn(2, 4, 8, 8), torch.tensor([625, 625]), torch.randn(2, 5, 16)
    with torch.no_grad():
        assert torch.equal(loaded.eval()(z, t, encoder_hidden_states=h).sample, unet(z, t, encoder_hidden_states=h).sample)


def test_a_pickle_that_calls_a_function_is_refused_without_running_it(tmp_path):
    planted = Planted(tmp_path / "ran")
    path, sha = _pickle(tmp_path, {"ema": planted})
    with pytest.raises(pickle.UnpicklingError, match="refused global"):
        read_pickled_unet(path, sha)
    assert not planted.marker.exists()


def test_wrong_hash_or_wrong_content_is_refused_before_or_after_unpickling(tmp_path, monkeypatch):
    path, sha = _pickle(tmp_path, {"ema": UNet2DConditionModel(**TINY)})
    monkeypatch.setattr(pickled, "load_skeleton", lambda fh: pytest.fail("unpickled before the hash matched"))
    with pytest.raises(io.ChecksumError, match="nothing was unpickled"):
        read_pickled_unet(path, "0" * 64)
    with pytest.raises(ValueError, match="full 64-hex-digit"):
        read_pickled_unet(path, sha[:8])
    monkeypatch.undo()
    with pytest.raises(ValueError, match="key 'generator'"):
        read_pickled_unet(path, sha, key="generator")
    other, osha = _pickle(tmp_path, {"ema": torch.nn.Linear(2, 2)}, "linear.pkl")
    with pytest.raises(ValueError, match="not a diffusers UNet2DConditionModel"):
        read_pickled_unet(other, osha)


def test_cli_converts_and_refuses_in_one_line(tmp_path):
    from click.testing import CliRunner

    from pecker.cli import main

    path, sha = _pickle(tmp_path, {"ema": UNet2DConditionModel(**TINY)})
    ok = CliRunner().invoke(main, ["teacher", "convert-pickled", str(path), "--sha256", sha, "--out", str(tmp_path / "g")])
    assert ok.exit_code == 0, ok.output
    assert (tmp_path / "g.safetensors").is_file() and (tmp_path / "g.json").is_file()
    bad = CliRunner().invoke(main, ["teacher", "convert-pickled", str(path), "--sha256", "0" * 64, "--out", str(tmp_path / "h")])
    assert bad.exit_code == 1 and "nothing was unpickled" in bad.output and "Traceback" not in bad.output
    assert not (tmp_path / "h.safetensors").exists()
