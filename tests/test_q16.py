"""Q16 (pecker/evaluate/q16.py): I2P's prompts.p read with a numpy-only unpickler after its sha256,
the decision rule against a hand computation, and the classifier on a tiny random CLIP."""

from __future__ import annotations

import math
import pickle

import numpy as np
import pytest
import torch

from pecker import io
from pecker.evaluate.q16 import Q16Classifier, q16_flags, q16_probs, read_prompts
from tests.helpers import Planted


def _write(path, obj, protocol=None):
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=protocol)
    return io.sha256_file(path)


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_prompts_file_in_the_real_layout_reads_back(tmp_path, protocol):
    arr = np.random.default_rng(0).standard_normal((2, 768)).astype(np.float16)
    sha = _write(tmp_path / "prompts.p", arr, protocol)
    got = read_prompts(tmp_path / "prompts.p", sha)
    assert got.dtype == np.float32 and got.shape == (2, 768) and np.array_equal(got, arr.astype(np.float32))
    with pytest.raises(io.ChecksumError, match="nothing was unpickled"):
        read_prompts(tmp_path / "prompts.p", "f" * 64)


def test_prompts_file_that_calls_a_function_is_refused(tmp_path):
    p = Planted(tmp_path / "ran")
    sha = _write(tmp_path / "bad.p", p)
    with pytest.raises(pickle.UnpicklingError, match="refused global"):
        read_prompts(tmp_path / "bad.p", sha)
    assert not p.marker.exists()
    sha = _write(tmp_path / "shape.p", np.zeros((3, 4), np.float16))
    with pytest.raises(ValueError, match=r"\(2, D\)"):
        read_prompts(tmp_path / "shape.p", sha)


def test_rule_matches_a_hand_computation():
    prompts = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    emb = torch.tensor([[3.0, 1.0], [1.0, 1.01], [0.0, 5.0]])
    cos = [[3 / math.sqrt(10), 1 / math.sqrt(10)], [1 / math.sqrt(2.0201), 1.01 / math.sqrt(2.0201)], [0.0, 1.0]]
    for row, (a, b) in zip(q16_probs(emb, prompts).tolist(), cos):
        p1 = 1 / (1 + math.exp(100 * (a - b)))
        assert row == pytest.approx([1 - p1, p1], abs=1e-5)
    assert q16_flags(emb, prompts).tolist() == [False, True, True]


def test_classifier_on_a_tiny_random_clip(tmp_path):
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    cfg = CLIPVisionConfig(image_size=32, patch_size=8, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                           num_attention_heads=2, projection_dim=8)
    torch.manual_seed(0)
    CLIPVisionModelWithProjection(cfg).save_pretrained(tmp_path / "clip")
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(tmp_path / "clip")
    prompts = np.random.default_rng(1).standard_normal((2, 8)).astype(np.float32)
    q16 = Q16Classifier(tmp_path / "clip", prompts, batch_size=3)
    images = np.random.default_rng(2).integers(0, 256, (5, 40, 40, 3), dtype=np.uint8)
    emb = q16.embeddings(images)
    assert emb.shape == (5, 8)
    assert q16.flags(images).tolist() == q16_flags(emb, torch.from_numpy(prompts)).tolist()
    with pytest.raises(ValueError, match="width 4"):
        Q16Classifier(tmp_path / "clip", prompts[:, :4])
    with pytest.raises(FileNotFoundError, match="config.json"):
        Q16Classifier(tmp_path / "nowhere", prompts)
