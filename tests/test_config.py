import pytest

from pecker import config as cfgmod
from tests.helpers import REPO

CONFIGS = ["config.yaml", "test.yaml", "cifar10.yaml", "stl10.yaml"]


@pytest.mark.parametrize("name", CONFIGS)
def test_shipped_configs_validate(name):
    cfg = cfgmod.resolve([REPO / "config" / name])
    assert cfg["datasets"]


def test_defaults_are_filled():
    cfg = cfgmod.resolve([REPO / "config" / "test.yaml"])
    t = cfgmod.dataset_config(cfg, "mnist-tiny")["teacher"]
    assert t["grad_clip"] == 1.0 and t["label_dropout"] == 0.1 and t["sample"]["sampler"] == "ddim"


@pytest.mark.parametrize(
    "override, key",
    [
        ("datasets.mnist-tiny.teacher.steps=ten", "datasets.mnist-tiny.teacher.steps"),
        ("datasets.mnist-tiny.teacher.stepz=10", "datasets.mnist-tiny.teacher"),
        ("datasets.mnist-tiny.data.source=imagenet", "datasets.mnist-tiny.data.source"),
        ("device=tpu", "device"),
        ("datasets.mnist-tiny.unet.attention_resolutions=[3]", "datasets.mnist-tiny.unet.attention_resolutions"),
    ],
)
def test_bad_values_name_the_key(override, key):
    with pytest.raises(cfgmod.ConfigError) as err:
        cfgmod.resolve([REPO / "config" / "test.yaml"], [override])
    assert f"'{key}'" in str(err.value)


def test_override_parsing_and_merge():
    assert cfgmod.parse_override("a.b.c=[1, 2]") == {"a": {"b": {"c": [1, 2]}}}
    merged = cfgmod.deep_merge({"a": {"x": 1, "y": 2}}, {"a": {"y": 3}})
    assert merged == {"a": {"x": 1, "y": 3}}


def test_stage_hash_depends_only_on_its_sections():
    base = cfgmod.resolve([REPO / "config" / "test.yaml"])
    other = cfgmod.resolve([REPO / "config" / "test.yaml"], ["datasets.mnist-tiny.classifier.epochs=7"])
    assert cfgmod.stage_hash(base, "mnist-tiny", "teacher") == cfgmod.stage_hash(other, "mnist-tiny", "teacher")
    assert cfgmod.stage_hash(base, "mnist-tiny", "classifier") != cfgmod.stage_hash(other, "mnist-tiny", "classifier")


def test_unknown_dataset_is_named():
    cfg = cfgmod.resolve([REPO / "config" / "test.yaml"])
    with pytest.raises(cfgmod.ConfigError, match="'cifar100'"):
        cfgmod.dataset_config(cfg, "cifar100")


def test_reference_features_depend_on_the_forget_class_not_on_run_lengths():
    base = cfgmod.resolve([REPO / "config" / "test.yaml"])
    longer = cfgmod.resolve([REPO / "config" / "test.yaml"], ["datasets.mnist-tiny.unlearn.steps=99"])
    other = cfgmod.resolve([REPO / "config" / "test.yaml"], ["datasets.mnist-tiny.unlearn.forget_class=3"])
    ref = [cfgmod.stage_hash(c, "mnist-tiny", "reference") for c in (base, longer, other)]
    assert ref[0] == ref[1] != ref[2]
    assert cfgmod.stage_hash(base, "mnist-tiny", "evaluate") != cfgmod.stage_hash(longer, "mnist-tiny", "evaluate")
