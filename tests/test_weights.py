"""Third-party weights (pecker/weights.py): verified in full or against the published prefix before
any read, and read without running code from the file."""

from __future__ import annotations

import pickle

import pytest
import torch

from pecker import io, weights

ASSET = weights.Asset("toy", "https://example.invalid/models/toy-00000000.pth", "x.sha256")


class Payload:
    """Unpickling this runs code: what a planted weights file would do."""

    ran = False

    def __reduce__(self):
        return (Payload._run, ())

    @staticmethod
    def _run():
        Payload.ran = True
        return {}


def _planted(tmp_path):
    path = tmp_path / "planted.pth"
    with path.open("wb") as fh:
        pickle.dump({"w": Payload()}, fh, protocol=2)
    return path


def test_published_urls_and_prefixes():
    from torchvision.models import ResNet34_Weights

    assert weights.RESNET34.url == ResNet34_Weights.IMAGENET1K_V1.url
    assert weights.RESNET34.published_prefix == "b627a593"
    assert weights.INCEPTION.published_prefix == "6726825d"


def test_full_hash_required_to_match(tmp_path):
    path = tmp_path / "w.pth"
    torch.save({"w": torch.arange(3.0)}, path)
    full = io.sha256_file(path)
    state, digest = weights.load_state_dict(ASSET, full, path)
    assert digest == full and torch.equal(state["w"], torch.arange(3.0))
    with pytest.raises(io.ChecksumError, match="w.pth"):
        weights.fetch(ASSET, "0" * 64, path)
    with pytest.raises(io.ChecksumError, match="not a full"):
        weights.fetch(ASSET, full[:8], path)


def test_without_a_pinned_hash_the_published_prefix_must_match(tmp_path):
    path = tmp_path / "w.pth"
    torch.save({"w": torch.zeros(2)}, path)
    full = io.sha256_file(path)
    with pytest.raises(io.ChecksumError, match="published with prefix 00000000"):
        weights.fetch(ASSET, None, path)
    own = weights.Asset("toy", f"https://example.invalid/toy-{full[:8]}.pth", "x.sha256")
    assert weights.fetch(own, None, path) == (path, full)


def test_a_planted_file_never_runs_its_payload(tmp_path):
    path = _planted(tmp_path)
    own = weights.Asset("toy", f"https://example.invalid/toy-{io.sha256_file(path)[:8]}.pth", "x.sha256")
    Payload.ran = False
    with pytest.raises(pickle.UnpicklingError):
        weights.load_state_dict(own, io.sha256_file(path), path)  # the hash matches: weights_only still refuses
    with pytest.raises(pickle.UnpicklingError), weights.weights_only_loads():
        torch.load(path, weights_only=False)  # what torch-fidelity asks for, forced safe
    assert not Payload.ran
    assert torch.load.__name__ == "load"  # restored after the block


def test_absent_file_offline_names_what_to_do(tmp_path, monkeypatch):
    def offline(url, dst, progress=False):
        raise OSError("network unreachable")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(FileNotFoundError, match="networked machine"):
        weights.fetch(ASSET, None, tmp_path / "absent.pth")
    assert list(tmp_path.iterdir()) == []  # no partial file left behind


def test_resnet34_pretrained_loads_verified_weights(tmp_path, monkeypatch):
    """The classifier's ImageNet start goes through the verified, weights-only path."""
    from torchvision.models import resnet34

    from pecker.classifier.models import build_classifier

    path = tmp_path / weights.RESNET34.filename
    torch.manual_seed(0)
    torch.save(resnet34(weights=None).state_dict(), path)
    monkeypatch.setattr(weights, "cache_path", lambda asset: path)
    model = build_classifier("resnet34", 3, 10, pretrained=True, pretrained_sha256=io.sha256_file(path))
    ref = torch.load(path, weights_only=True)
    assert torch.equal(model.conv1.weight, ref["conv1.weight"]) and model.fc.out_features == 10
    assert model.pretrained_sha256 == io.sha256_file(path)
    with pytest.raises(io.ChecksumError):
        build_classifier("resnet34", 3, 10, pretrained=True, pretrained_sha256="f" * 64)
