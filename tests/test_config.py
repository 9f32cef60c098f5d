import pytest

from pecker import config as cfgmod
from pecker import workflow as W
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
    assert W.stage_hash(base, "mnist-tiny", "teacher") == W.stage_hash(other, "mnist-tiny", "teacher")
    assert W.stage_hash(base, "mnist-tiny", "classifier") != W.stage_hash(other, "mnist-tiny", "classifier")


def test_unknown_dataset_is_named():
    cfg = cfgmod.resolve([REPO / "config" / "test.yaml"])
    with pytest.raises(cfgmod.ConfigError, match="'cifar100'"):
        cfgmod.dataset_config(cfg, "cifar100")


def test_reference_features_depend_on_the_forget_class_not_on_run_lengths():
    base = cfgmod.resolve([REPO / "config" / "test.yaml"])
    longer = cfgmod.resolve([REPO / "config" / "test.yaml"], ["datasets.mnist-tiny.unlearn.steps=99"])
    other = cfgmod.resolve([REPO / "config" / "test.yaml"], ["datasets.mnist-tiny.unlearn.forget_class=3"])
    ref = [W.stage_hash(c, "mnist-tiny", "reference") for c in (base, longer, other)]
    assert ref[0] == ref[1] != ref[2]
    # a longer run resumes: the unlearn hash leaves its length out (the rule's `length` param reruns it)
    h = [W.stage_hash(c, "mnist-tiny", "unlearn", method="pecker", seed=0) for c in (base, longer, other)]
    assert h[0] == h[1] != h[2]
    assert W.run_length(base, "mnist-tiny", "unlearn", "pecker") != W.run_length(longer, "mnist-tiny", "unlearn", "pecker")


def test_adding_an_unlearning_variant_changes_no_existing_hash():
    base = cfgmod.resolve([REPO / "config" / "test.yaml"])
    more = cfgmod.resolve([REPO / "config" / "test.yaml"],
                          ["datasets.mnist-tiny.unlearn.methods.pecker_once={lam_psi: 1.0, mu_psi: 1.0, lam_theta: 1.0, mu_theta: 1.0, mask: {enabled: true, refresh: once}}"])
    for stage in ("teacher", "classifier", "reference", "evaluate"):
        assert W.stage_hash(base, "mnist-tiny", stage) == W.stage_hash(more, "mnist-tiny", stage), stage
    for m in ("sfd", "pecker"):
        assert W.stage_hash(base, "mnist-tiny", "unlearn", method=m, seed=0) == W.stage_hash(
            more, "mnist-tiny", "unlearn", method=m, seed=0)
    other = cfgmod.resolve([REPO / "config" / "test.yaml"], ["datasets.mnist-tiny.unlearn.cover_class=2"])
    assert W.stage_hash(base, "mnist-tiny", "evaluate") != W.stage_hash(other, "mnist-tiny", "evaluate")


def test_ablation_overlay_merges_onto_the_embedded_config():
    cfg = cfgmod.resolve([REPO / "config" / "config.yaml", REPO / "config" / "ablation.yaml"])
    methods = cfg["datasets"]["mnist"]["unlearn"]["methods"]
    assert {"sfd", "pecker", "pecker_once", "pecker_ratio03", "pecker_per_layer"} <= set(methods)
    assert methods["pecker_once"]["mask"]["refresh"] == "once"
    assert cfg["datasets"]["mnist"]["unlearn"]["steps"] == cfgmod.resolve([REPO / "config" / "config.yaml"])[
        "datasets"]["mnist"]["unlearn"]["steps"]


def test_workflow_parse_imports_no_torch(tmp_path):
    """What rules/common.smk runs at parse time (on a cluster: once per job) stays torch-free."""
    import subprocess
    import sys

    code = (
        "import sys; from pecker import workflow as W\n"
        f"cfg = W.resolve([{str(REPO / 'config' / 'test.yaml')!r}]); W.configured_runs(cfg)\n"
        "[W.stage_hash(cfg, 'mnist-tiny', s, method='pecker', seed=0) for s in W.STAGES]\n"
        f"W.store_resolved(cfg, 'mnist-tiny', {str(tmp_path)!r})\n"
        "assert 'torch' not in sys.modules, 'torch imported at parse time'\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert res.returncode == 0, res.stderr


def test_unlearn_hash_needs_method_and_seed_and_ignores_bookkeeping():
    base = cfgmod.resolve([REPO / "config" / "test.yaml"])
    with pytest.raises(cfgmod.ConfigError, match="method and a seed"):
        W.stage_hash(base, "mnist-tiny", "unlearn")
    ds = "datasets.mnist-tiny"
    same = cfgmod.resolve([REPO / "config" / "test.yaml"], [f"{ds}.unlearn.checkpoint_every=1", f"{ds}.unlearn.log_every=3",
                                                           f"{ds}.teacher.steps=99", f"{ds}.teacher.sample.per_class=9"])
    for stage in ("teacher",):
        assert W.stage_hash(base, "mnist-tiny", stage) == W.stage_hash(same, "mnist-tiny", stage)
    assert W.stage_hash(base, "mnist-tiny", "sample") != W.stage_hash(same, "mnist-tiny", "sample")
    h = {(m, s): W.stage_hash(base, "mnist-tiny", "unlearn", method=m, seed=s) for m in ("sfd", "pecker") for s in (0, 1)}
    assert len(set(h.values())) == 4
    assert h[("pecker", 0)] == W.stage_hash(same, "mnist-tiny", "unlearn", method="pecker", seed=0)


FT = "datasets.fashion-tiny"


@pytest.mark.parametrize("override, key", [
    (f"{FT}.unet.arch=unet2d", f"{FT}.unet.arch"),
    (f"{FT}.unlearn.methods.sfd_sneaker.task=brad", f"{FT}.unlearn.methods.sfd_sneaker.task"),
    (f"{FT}.unlearn.tasks.sneaker.prompts=config/prompts/fashion/nowhere.csv", f"{FT}.unlearn.tasks.sneaker.prompts"),
    (f"{FT}.text.captions=null", f"{FT}.text.captions"),
    (f"{FT}.unlearn.tasks.sneaker.type=painting", f"{FT}.unlearn.tasks.sneaker.type"),
    (f"{FT}.unlearn.methods.salun={{kind: salun}}", f"{FT}.unlearn.methods.salun.kind"),
    (f"{FT}.unlearn.methods.sa={{kind: sa}}", f"{FT}.unlearn.methods.sa.task"),
    (f"{FT}.unlearn.methods.sa={{kind: sa, task: nudity}}", f"{FT}.unlearn.methods.sa.surrogate.prompt"),
    (f"{FT}.unlearn.methods.sld={{task: nudity, lam_psi: 1, mu_psi: 1, lam_theta: 1, mu_theta: 1}}",
     f"{FT}.unlearn.methods.sld"),
    (f"{FT}.evaluate.concept.i2p_prompts=null", f"{FT}.evaluate.concept.i2p_prompts"),
    ("datasets.mnist-tiny.unlearn.methods.sfd.task=sneaker", "datasets.mnist-tiny.unlearn.tasks"),
    # SA's released Fisher: Stable Diffusion's, and only as a checksummed asset file (a pickle)
    ("datasets.mnist-tiny.unlearn.methods.sa.fisher.released=data/assets/sa-fisher/full_fisher_dict.pkl",
     "datasets.mnist-tiny.unlearn.methods.sa.fisher.released"),
    (f"{FT}.unlearn.methods.sa_sneaker.fisher.released=/tmp/full_fisher_dict.pkl",
     f"{FT}.unlearn.methods.sa_sneaker.fisher.released"),
    # the baselines' own SD UNet only with an SD-folder teacher
    ("datasets.mnist-tiny.teacher.baselines_model=data/assets/sd-v1-4", "datasets.mnist-tiny.teacher.baselines_model"),
])
def test_bad_text_dataset_names_the_key(override, key):
    with pytest.raises(cfgmod.ConfigError) as err:
        cfgmod.resolve([REPO / "config" / "test.yaml"], [override])
    assert f"'{key}" in str(err.value)


def test_text_dataset_hashes_follow_its_prompt_files(tmp_path):
    """Editing a prompt file (same path) changes the teacher's and the runs' stage hashes, not the data's;
    class datasets keep theirs."""
    import shutil

    copy = tmp_path / "captions.yaml"
    shutil.copy(REPO / "config" / "prompts" / "fashion" / "captions.yaml", copy)

    def hashes():
        cfg = cfgmod.resolve([REPO / "config" / "test.yaml"], [f"{FT}.text.captions={copy}"])
        return (W.stage_hash(cfg, "fashion-tiny", "teacher"), W.stage_hash(cfg, "fashion-tiny", "data"),
                W.stage_hash(cfg, "fashion-tiny", "unlearn", method="sfd_nudity", seed=0),
                W.stage_hash(cfg, "mnist-tiny", "teacher"))

    before = hashes()
    copy.write_text(copy.read_text() + "\n# edited\n")
    after = hashes()
    assert after[0] != before[0] and after[2] != before[2]
    assert after[1] == before[1] and after[3] == before[3]
