import json

import numpy as np
import pytest
import torch

from pecker import io


def test_checkpoint_round_trip_and_checksum(tmp_path):
    t = {"a": torch.arange(6.0).view(2, 3), "b": torch.tensor([1, 2], dtype=torch.int64)}
    io.save_checkpoint(tmp_path / "ck", t, {"step": 3})
    loaded, meta = io.load_checkpoint(tmp_path / "ck")
    assert meta["step"] == 3 and len(meta["sha256"]) == 64
    assert torch.equal(loaded["a"], t["a"]) and torch.equal(loaded["b"], t["b"])
    # corrupt one byte: loading must refuse before reading tensors
    raw = bytearray((tmp_path / "ck.safetensors").read_bytes())
    raw[-1] ^= 0xFF
    (tmp_path / "ck.safetensors").write_bytes(bytes(raw))
    with pytest.raises(io.ChecksumError):
        io.load_checkpoint(tmp_path / "ck")


def test_atomic_write_leaves_old_file_on_failure(tmp_path):
    p = tmp_path / "out.json"
    io.atomic_write_json(p, {"v": 1})
    with pytest.raises(RuntimeError):
        with io.atomic_path(p) as tmp:
            tmp.write_text("partial")
            raise RuntimeError("killed")
    assert json.loads(p.read_text()) == {"v": 1}
    assert [f.name for f in tmp_path.iterdir()] == ["out.json"]


def test_optimizer_and_rng_round_trip():
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, betas=(0.0, 0.999))
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    tensors, meta = io.optimizer_to_tensors(opt, "opt")
    opt2 = torch.optim.Adam(model.parameters(), lr=5.0)
    io.optimizer_from_tensors(opt2, tensors, json.loads(json.dumps(meta)), "opt")
    s1, s2 = opt.state_dict(), opt2.state_dict()
    assert s2["param_groups"][0]["lr"] == 1e-3 and s2["param_groups"][0]["betas"] == [0.0, 0.999]
    for k in s1["state"]:
        for name in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(s1["state"][k][name], s2["state"][k][name])

    gen = torch.Generator().manual_seed(5)
    rt, rm = io.rng_to_tensors({"g": gen})
    rm = json.loads(json.dumps(rm))
    a = (torch.rand(3), np.random.rand(3), torch.rand(2, generator=gen))
    io.rng_from_tensors(rt, rm, {"g": gen})
    b = (torch.rand(3), np.random.rand(3), torch.rand(2, generator=gen))
    assert torch.equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and torch.equal(a[2], b[2])


@pytest.mark.parametrize("expected", ["prefix", "", "x" * 64, "other"])
def test_verify_checksum_needs_the_full_matching_hash(tmp_path, expected):
    p = tmp_path / "f.bin"
    p.write_bytes(b"pecker")
    full = io.sha256_file(p)
    assert io.verify_checksum(p, full.upper()) == full
    wanted = {"prefix": full[:8], "other": io.sha256_file(__file__)}.get(expected, expected)
    with pytest.raises(io.ChecksumError, match="f.bin"):  # a prefix (even one hex digit) is refused
        io.verify_checksum(p, wanted)
