"""What ``pecker evaluate model`` checks and records: the generator's task against the config, one
Inception pass for features and IS logits, typed metric sources (no real Inception weights needed)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from pecker.cli import main
from pecker.evaluate import run as ev
from pecker.report import audit as aud
from tests.helpers import REPO, tiny_config

TEST_CFG = str(REPO / "config" / "test.yaml")
SIDECAR = "results/mnist-tiny/unlearn/pecker/seed0/generator_ema.json"


def ds_cfg(forget=0, cover=1) -> dict:
    return {"unlearn": {"forget_class": forget, "cover_class": cover}}


def cls(label: int) -> dict:
    return {"type": "class", "label": label}


# ----------------------------------------------------------------------------- generator task check


def test_task_check_accepts_the_configured_task():
    assert ev.check_generator_task({"forget": cls(0), "cover": cls(1)}, ds_cfg(), SIDECAR) == (0, 1)
    assert ev.check_generator_task({"forget": cls(3), "cover": cls(5)}, ds_cfg(3, 5), SIDECAR) == (3, 5)
    # older final sidecars: forget_class / cover_class
    assert ev.check_generator_task({"forget_class": 2, "cover_class": 1}, ds_cfg(2, 1), SIDECAR) == (2, 1)
    # the new records win over the old keys when both are present
    side = {"forget": cls(4), "cover": cls(1), "forget_class": 0, "cover_class": 1}
    assert ev.check_generator_task(side, ds_cfg(4, 1), SIDECAR) == (4, 1)
    with pytest.raises(ev.TaskMismatch):
        ev.check_generator_task(side, ds_cfg(0, 1), SIDECAR)


def test_task_check_refuses_another_forget_class():
    with pytest.raises(ev.TaskMismatch) as err:
        ev.check_generator_task({"forget": cls(3), "cover": cls(1)}, ds_cfg(0, 1), SIDECAR)
    msg = str(err.value)
    assert msg.startswith(f"{SIDECAR} was trained to forget class 3 (cover 1), "
                          "the config scores forget class 0 (cover 1):"), msg


def test_task_check_refuses_another_cover_class():
    with pytest.raises(ev.TaskMismatch, match=r"forget class 0 \(cover 2\), the config scores forget class 0 \(cover 1\)"):
        ev.check_generator_task({"forget": cls(0), "cover": cls(2)}, ds_cfg(0, 1), SIDECAR)
    with pytest.raises(ev.TaskMismatch, match=r"forget class 5 \(cover 7\).*forget class 5 \(cover 1\)"):
        ev.check_generator_task({"forget_class": 5, "cover_class": 7}, ds_cfg(5, 1), SIDECAR)


def test_task_check_refuses_unrecorded_or_non_class_tasks():
    with pytest.raises(ev.TaskMismatch, match=f"{SIDECAR} does not record which class it forgot"):
        ev.check_generator_task({"kind": "one_step_generator", "t_init": 440}, ds_cfg(), SIDECAR)
    with pytest.raises(ev.TaskMismatch, match="does not record which class covers"):
        ev.check_generator_task({"forget": cls(0)}, ds_cfg(), SIDECAR)
    with pytest.raises(ev.TaskMismatch, match="not a class label"):
        ev.check_generator_task({"forget": {"type": "text", "n_prompts": 4}, "cover": cls(1)}, ds_cfg(), SIDECAR)
    with pytest.raises(ev.TaskMismatch, match="not a class label"):
        ev.check_generator_task({"forget": {"type": "class"}, "cover": cls(1)}, ds_cfg(), SIDECAR)


@pytest.fixture()
def no_sampling(monkeypatch):
    """Make drawing a sample (or starting the evaluation) fail loudly: the check must come first."""

    class Sampled(Exception):
        pass

    def boom(*args, **kwargs):
        raise Sampled("the evaluation started")

    monkeypatch.setattr(ev, "sample_many", boom)
    monkeypatch.setattr(ev, "evaluate_model", boom)
    return Sampled


def _save_tiny(prefix, meta):
    from pecker.diffusion.unet import build_unet, save_unet

    ds = tiny_config()
    torch.manual_seed(0)
    save_unet(prefix, build_unet(ds["unet"], ds["data"]), meta)


def _evaluate(tmp_path, kind, prefix):
    return CliRunner().invoke(main, [
        "evaluate", "model", "-c", TEST_CFG, "-d", "mnist-tiny", "--kind", kind, "--checkpoint", str(prefix),
        "--classifier", str(tmp_path / "no-classifier"), "--data", str(tmp_path / "no-data"),
        "--out", str(tmp_path / "eval.json")])


def test_cli_refuses_generator_trained_for_another_class(tmp_path, no_sampling):
    gen = {"kind": "one_step_generator", "t_init": 440, "diffusion": {}}
    bad = tmp_path / "run" / "generator_ema"
    _save_tiny(bad, {**gen, "forget": cls(3), "cover": cls(1)})
    res = _evaluate(tmp_path, "generator", bad)
    assert res.exit_code == 1, res.output
    assert not isinstance(res.exception, no_sampling) and "Traceback" not in res.output
    assert f"{bad}.json was trained to forget class 3 (cover 1), the config scores forget class 0 (cover 1)" \
        in res.output, res.output
    assert not (tmp_path / "eval.json").exists()

    unknown = tmp_path / "old" / "generator_ema"
    _save_tiny(unknown, gen)
    res = _evaluate(tmp_path, "generator", unknown)
    assert res.exit_code == 1 and "does not record which class it forgot" in res.output, res.output

    # the configured task passes the check and the evaluation starts
    good = tmp_path / "good" / "generator_ema"
    _save_tiny(good, {**gen, "forget": cls(0), "cover": cls(1)})
    res = _evaluate(tmp_path, "generator", good)
    assert isinstance(res.exception, no_sampling), res.output


def test_cli_does_not_check_the_teacher(tmp_path, no_sampling):
    teacher = tmp_path / "teacher" / "ema"
    _save_tiny(teacher, {"kind": "unet"})  # records no forget class, as a teacher does not
    res = _evaluate(tmp_path, "teacher", teacher)
    assert isinstance(res.exception, no_sampling), res.output


# ----------------------------------------------------------------------------- one Inception pass


class FakeDetector:
    """Counts passes; features are a fixed function of the images. No logits (like NVIDIA's detector)."""

    name = "nv-inception-2015-12-05"
    checksum = "f" * 64
    feature_dim = 16

    def __init__(self):
        self.calls = {"features": 0, "logits": 0, "features_and_logits": 0}
        rng = np.random.default_rng(0)
        self.w_feat = rng.normal(size=(64, self.feature_dim))
        self.w_logit = rng.normal(size=(64, 12))

    def describe(self):
        return {"name": self.name, "checksum": self.checksum, "feature_dim": self.feature_dim}

    def _flat(self, images):
        x = images.astype(np.float64).reshape(len(images), -1) / 255.0
        return np.resize(x, (len(images), 64))

    def features(self, images, batch_size=50):
        self.calls["features"] += 1
        return (self._flat(images) @ self.w_feat).astype(np.float32)



class FakeInception(FakeDetector):
    """torch-fidelity's Inception stand-in: features and 12-way logits, separately or in one pass."""

    name = "inception-v3-compat"

    def logits(self, images, batch_size=50):
        self.calls["logits"] += 1
        return (self._flat(images) @ self.w_logit).astype(np.float32)

    def features_and_logits(self, images, batch_size=50):
        self.calls["features_and_logits"] += 1
        x = self._flat(images)
        return (x @ self.w_feat).astype(np.float32), (x @ self.w_logit).astype(np.float32)


def _images(n=6, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, 8, 8, 1), dtype=np.uint8)


def test_generated_features_one_pass_with_logits():
    ex, imgs = FakeInception(), _images()
    feats, logits = ev.generated_features(ex, imgs, 4, with_logits=True)
    assert ex.calls == {"features": 0, "logits": 0, "features_and_logits": 1}
    np.testing.assert_array_equal(feats, FakeInception().features(imgs))
    np.testing.assert_array_equal(logits, FakeInception().logits(imgs))

    ex = FakeInception()
    feats2, none = ev.generated_features(ex, imgs, 4, with_logits=False)
    assert none is None and ex.calls == {"features": 1, "logits": 0, "features_and_logits": 0}
    np.testing.assert_array_equal(feats, feats2)


def test_generated_features_refuses_logits_from_an_extractor_without_them():
    ex = FakeDetector()
    with pytest.raises(ValueError, match="needs Inception logits"):
        ev.generated_features(ex, _images(), 4, with_logits=True)
    assert ev.generated_features(ex, _images(), 4, with_logits=False)[1] is None


def test_evaluate_model_one_inception_pass_and_typed_sources(tmp_path, monkeypatch):
    """Paper path (inception-v3-compat, IS from its logits) with fakes for the networks: the generated
    images go through Inception once, and every metric source is a typed record."""
    ex = FakeInception()
    k = 10

    def fake_logits(clf, spec, images, device=None):
        x = torch.from_numpy(images.astype(np.float32).reshape(len(images), -1)[:, :k])
        return x / 255.0

    cmeta = {"input_spec": {}, "sha256": "c" * 64, "arch": {"name": "small_cnn"}, "heldout_accuracy": 0.9,
             "substitute": True}
    monkeypatch.setattr(ev, "build_extractor", lambda name, device=None, **kw: ex)
    monkeypatch.setattr(ev, "load_classifier", lambda prefix, device: (None, cmeta))
    monkeypatch.setattr(ev, "predict_logits", fake_logits)
    monkeypatch.setattr(ev, "reference_images",
                        lambda data_dir, classes, n: (_images(3 * len(classes), seed=1), "d" * 64))

    ds = tiny_config()
    ds["evaluate"].update(extractor="inception-v3-compat", is_source="auto", cross_check=True,
                          implementation="torch-fidelity", per_class=2, n_forget=4, is_splits=2)

    def draw(y, g):
        return torch.rand((len(y), 1, 8, 8), generator=g) * 2 - 1

    res = ev.evaluate_model(ds, "mnist-tiny", draw, classifier_prefix="clf", data_dir=tmp_path,
                            results_dir=tmp_path, device=torch.device("cpu"), final=True,
                            reference_cache=tmp_path / "ref.npz")
    # reference features once (cache miss), generated features + IS logits in one pass
    assert ex.calls == {"features": 1, "logits": 0, "features_and_logits": 1}
    assert res["details"]["inception_score"]["n_classes"] == 12  # the Inception logits, not the classifier's
    assert res["metric_sources"]["is_mean"]["source"] == "inception-v3-compat-logits-unbiased"

    src = res["metric_sources"]
    json.dumps(src)
    tf = {"library": "torch-fidelity", "version": "0.4.0"}
    assert src["fid"] == {**tf, "function": "metric_fid.fid_statistics_to_metric",
                          "extractor": "inception-v3-compat", "extractor_sha256": "f" * 64, "n_gen": 18, "n_ref": 27,
                          "substitute": False,
                          "cross_check": {"library": "clean-fid", "version": "0.1.35", "function": "fid.frechet_distance",
                                          "value": res["details"]["fidelity_cross_check"]["fid"]}}
    assert src["kid_std"]["function"] == "metric_kid.kid_features_to_metric"
    assert src["kid_std"]["cross_check"]["note"] == "std over per-subset calls"
    assert src["precision"]["function"] == "metric_prc.prc_features_to_metric" and "cross_check" not in src["precision"]
    assert src["is_mean"] == {**tf, "function": "metric_isc.isc_features_to_metric",
                              "source": "inception-v3-compat-logits-unbiased", "substitute": False, "n": 18}
    assert src["is_std"] == src["is_mean"]
    for m in ("fid", "kid_mean", "kid_std", "precision", "recall", "is_mean"):
        assert not any(isinstance(v, str) and "==" in v for v in src[m].values()), (m, src[m])

    # the audit reads these fields as they are
    rec = {**res, "method": "pecker", "seed": 0}
    text, missing, _, notes = aud.evaluator_of(rec, "fid")
    assert text == "torch-fidelity 0.4.0, extractor inception-v3-compat" and missing == []
    assert any("cross-check clean-fid 0.1.35 (fid.frechet_distance) gives" in n for n in notes)
    assert aud.evaluator_of(rec, "is_mean")[0] == \
        "inception-v3-compat-logits-unbiased, torch-fidelity 0.4.0 metric_isc.isc_features_to_metric"


def test_evaluate_model_refuses_inception_is_without_logits_before_sampling(monkeypatch):
    ds = tiny_config()
    ds["evaluate"].update(extractor="nv-inception-2015-12-05", is_source="inception")
    monkeypatch.setattr(ev, "sample_many", lambda *a, **k: pytest.fail("sampled before the check"))
    with pytest.raises(ValueError, match="needs Inception logits"):
        ev.evaluate_model(ds, "mnist-tiny", None, classifier_prefix="clf", data_dir=".", results_dir=".",
                          device=torch.device("cpu"), final=True)
