"""The prompt sets of the embedded concept-forgetting analogue (config/prompts/fashion/) and the module
that reads them (pecker/text/prompts.py): override prompts, the caption spec and its captions, the
celebrity-, nudity- and I2P-style sets, and the errors for malformed files."""

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from pecker.text import prompts as P

REPO = Path(__file__).resolve().parents[1]
FASHION = REPO / "config" / "prompts" / "fashion"
CAPTIONS = FASHION / "captions.yaml"
FASHION_MNIST = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                 "Ankle boot"]


@pytest.fixture(scope="module")
def spec():
    return P.load_caption_spec(CAPTIONS, num_classes=10)


# --- override prompts ------------------------------------------------------------------------------

def test_override_is_case_insensitive_and_replaces_every_occurrence():
    assert P.override_prompt("A Sneaker next to a SNEAKER", "a sneaker", "a shoe") == "a shoe next to a shoe"
    assert P.override_prompt("a photo of Brad Pitt", "brad pitt", "a middle-aged man") == "a photo of a middle-aged man"


def test_override_escapes_the_concept_and_the_replacement():
    # "/" and "-" are literal, and "." must not act as a wildcard
    assert P.override_prompt("a T-Shirt/Top, close-up", "t-shirt/top", "a top") == "a a top, close-up"
    with pytest.raises(ValueError):
        P.override_prompt("a txshirt", "t.shirt", "a top")
    assert P.override_prompt("a (sneaker)+", "(sneaker)+", "x") == "a x"
    # a backslash in the override is not a group reference
    assert P.override_prompt("a sneaker", "sneaker", r"\1 shoe") == r"a \1 shoe"


def test_override_without_the_concept_names_the_prompt():
    with pytest.raises(ValueError, match="a photo of a bag"):
        P.override_prompt("a photo of a bag", "a sneaker", "a shoe")
    with pytest.raises(ValueError):
        P.override_prompt("a photo of a bag", "", "a shoe")


# --- the caption spec and its captions --------------------------------------------------------------

def test_shipped_caption_spec(spec):
    assert [c.name for c in spec.classes] == FASHION_MNIST
    assert spec.classes[7].phrases == ("a sneaker",) and spec.classes[7].generic == ()
    assert "a pullover" in spec.classes[2].phrases and spec.classes[2].generic == ()
    shoe = [y for y, c in enumerate(spec.classes) if "a shoe" in c.generic]
    top = [y for y, c in enumerate(spec.classes) if "a top" in c.generic]
    assert shoe == [5, 9] and top == [0, 4, 6]
    assert len(spec.keywords_train) == 10 and len(spec.keywords_heldout) == 5
    assert len(set(spec.keywords)) == 15 and all(k == k.lower() for k in spec.keywords)
    assert all(t.count("{}") == 1 for t in spec.templates)
    # templates given as openings x endings, opening-major
    assert len(spec.templates) == 10 * 5 and spec.templates[:2] == ("{}", "{} on a plain background")
    assert spec.templates[5] == "a photo of {}"
    assert spec.empty_fraction == 0.1 and spec.attribute_fraction == 0.25


def test_captions_for_order_and_counts(spec):
    assert P.captions_for(spec, 7, False) == [t.format("a sneaker") for t in spec.templates]
    # T-shirt/top: its phrase, then its generic phrase, each in every template
    plain0 = P.captions_for(spec, 0, False)
    assert len(plain0) == 2 * 50 and plain0[0] == "a t-shirt" and plain0[50] == "a top"
    attr = P.captions_for(spec, 7, True)
    assert len(attr) == 50 * 15 * 2 and len(set(attr)) == len(attr)
    first_kw, last_kw = spec.keywords[0], spec.keywords[-1]
    assert attr[0] == f"{first_kw} a sneaker"
    assert attr[-1] == f"{spec.templates[-1].format('a sneaker')}, {last_kw}"
    assert all(not P.keywords_in(c, spec.keywords) for c in P.captions_for(spec, 3, False))
    assert all(len(P.keywords_in(c, spec.keywords)) == 1 for c in attr)
    with pytest.raises(ValueError, match="label"):
        P.captions_for(spec, 10, False)
    with pytest.raises(ValueError, match="label"):
        P.captions_for(spec, -1, False)


def test_all_captions_count_sorted_unique_with_empty(spec):
    caps = P.all_captions(spec)
    # 12 distinct phrases (10 own + "a top" + "a shoe", shared by classes), 50 templates:
    # 600 plain captions, each also with 15 keywords x (prefix, suffix); plus ""
    assert len(caps) == 12 * 50 * (1 + 15 * 2) + 1 == 18601
    assert caps == sorted(set(caps)) and caps[0] == ""
    assert "a photo of a shoe" in caps and "a top" in caps and "inverted a sneaker" in caps
    held = spec.keywords_heldout[0]
    assert f"a bag, {held}" in caps  # the teacher trains on the held-out keywords too


def test_retain_prompts(spec):
    retain = P.retain_prompts(spec, exclude_labels=(7,))
    assert len(retain) == 11 * 50 and len(set(retain)) == len(retain)
    assert not any("sneaker" in r for r in retain) and "a shoe" in retain and "a photo of a pullover" in retain
    assert not any(P.keywords_in(r, spec.keywords) for r in retain)
    everything = P.retain_prompts(spec)
    assert set(everything) | {""} == set(P.all_captions(spec)) - {
        c for y in range(10) for c in P.captions_for(spec, y, True)}
    assert len(P.retain_prompts(spec, exclude_labels=(2,), attribute=True)) == 11 * 50 * 30
    with pytest.raises(ValueError, match="exclude_labels"):
        P.retain_prompts(spec, exclude_labels=(12,))


# --- the shipped prompt sets ---------------------------------------------------------------------

@pytest.mark.parametrize("name,concept,override", [("sneaker", "a sneaker", "a shoe"),
                                                   ("pullover", "a pullover", "a top")])
def test_celebrity_prompt_files(spec, name, concept, override):
    path = FASHION / f"celebrity_{name}.csv"
    assert list(pd.read_csv(path).columns) == ["prompt"]
    prompts = P.read_prompt_csv(path)
    assert len(prompts) == 50 and len(set(prompts)) == 50
    assert all(concept in p.lower() for p in prompts)
    assert any(concept not in p for p in prompts)  # some with another case, e.g. "A Sneaker"
    assert not any(P.keywords_in(p.lower(), spec.keywords) for p in prompts)
    known = set(P.all_captions(spec))
    # the teacher's own wording (its templates around the concept), as SD knows "a photo of Brad Pitt";
    # the text encoder is uncased, so "A Sneaker" is the caption "a sneaker"
    assert all(p.lower() in known for p in prompts)
    overrides = [P.override_prompt(p, concept, override) for p in prompts]
    assert all(override in o and concept not in o.lower() for o in overrides)
    assert f"a photo of {override}" in overrides


def test_nudity_forget_set(spec):
    raw = P.read_nudity_set(FASHION / "nudity.yaml")
    assert len(raw["subjects"]) == 12 and len(set(raw["subjects"])) == 12
    assert raw["negative_prompt"] == ", ".join(spec.keywords)
    forget, override = P.nudity_forget_prompts(spec, FASHION / "nudity.yaml")
    assert len(forget) == len(override) == 12 * 10 * 2 and len(set(forget)) == 240
    assert set(override) == set(raw["subjects"])
    for f, o in zip(forget, override):
        kws = P.keywords_in(f, spec.keywords)
        assert len(kws) == 1 and kws[0] in spec.keywords_train
        assert f in (f"{kws[0]} {o}", f"{o}, {kws[0]}")
    assert P.nudity_forget_prompts(spec, raw) == (forget, override)
    assert forget[:2] == [f"{spec.keywords_train[0]} {raw['subjects'][0]}",
                          f"{raw['subjects'][0]}, {spec.keywords_train[0]}"]


def test_nudity_subject_must_be_known(spec):
    with pytest.raises(P.PromptFileError, match="a red sneaker"):
        P.nudity_forget_prompts(spec, {"subjects": ["a bag", "a red sneaker"], "negative_prompt": "x"})
    with pytest.raises(P.PromptFileError, match="subjects"):
        P.nudity_forget_prompts(spec, {"subjects": [], "negative_prompt": "x"})


def test_i2p_analogue_file(spec):
    path = FASHION / "i2p_analogue.csv"
    raw = pd.read_csv(path, keep_default_na=False)
    assert tuple(raw.columns) == P.I2P_COLUMNS
    assert raw["sd_seed"].is_unique and (raw["sd_guidance_scale"] == 7).all()
    assert (raw["sd_image_width"] == 16).all() and (raw["sd_image_height"] == 16).all()
    df = P.read_i2p(path)
    assert list(df.columns) == ["prompt", "sd_seed", "sd_guidance_scale"]
    assert 50 <= len(df) <= 70 and df["sd_seed"].dtype == "int64" and df["sd_seed"].is_unique
    ok = P.held_out_keywords_present(df, spec)
    assert ok.all(), df[~ok]
    assert set(spec.keywords_heldout) == {k for p in df["prompt"] for k in P.keywords_in(p, spec.keywords)}
    forget, _ = P.nudity_forget_prompts(spec, FASHION / "nudity.yaml")
    assert not set(df["prompt"]) & set(forget)
    # the rows of another category stay out of the sexual set
    other = raw[~raw["categories"].str.contains("sexual")]
    assert len(other) and not set(other["prompt"]) & set(df["prompt"])
    assert len(P.read_i2p(path, category="harassment")) == len(other)


def test_held_out_keyword_check_can_fail(spec):
    train, held = spec.keywords_train[0], spec.keywords_heldout[0]
    df = pd.DataFrame({"prompt": [f"{held} a bag", f"{train} a bag", "a bag", f"{held} a bag, {train}"]})
    assert P.held_out_keywords_present(df, spec).tolist() == [True, False, False, False]


def test_module_does_not_import_torch():
    code = ("import sys, pecker.text.prompts as P; P.load_caption_spec(%r); print('torch' in sys.modules)"
            % str(CAPTIONS))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert out.stdout.strip() == "False"


# --- malformed files ---------------------------------------------------------------------------

def _spec_dict():
    return yaml.safe_load(CAPTIONS.read_text())


def _set(d, mutate):
    mutate(d)
    return d


BAD_SPECS = {
    "classes": lambda d: d["classes"].pop(),
    "classes[3].phrases": lambda d: d["classes"][3].update(phrases="a dress"),
    "classes[5].generic": lambda d: d["classes"][5].update(generic=["a sandal"]),
    "templates": lambda d: d.update(templates=["{} and {}"]),
    "templates.openings": lambda d: d["templates"].update(openings=["a {photo} of "]),
    "templates.endings": lambda d: d["templates"].update(endings=["", ""]),
    "keywords": lambda d: d["keywords"]["heldout"].append(d["keywords"]["train"][0]),
    "keywords.train": lambda d: d["keywords"]["train"].append("Bold"),
    "keywords.heldout": lambda d: d["keywords"]["heldout"].append("bag"),  # part of the phrase "a bag"
    "attribute_fraction": lambda d: d.update(attribute_fraction=1.5),
    "empty_fraction": lambda d: d.update(empty_fraction=True),
    "colour": lambda d: d.update(colour="red"),
}


@pytest.mark.parametrize("key", sorted(BAD_SPECS))
def test_bad_caption_spec_names_file_and_key(tmp_path, key):
    path = tmp_path / "captions.yaml"
    path.write_text(yaml.safe_dump(_set(_spec_dict(), BAD_SPECS[key])))
    with pytest.raises(P.PromptFileError) as err:
        P.load_caption_spec(path, num_classes=10)
    assert str(path) in str(err.value) and f"key '{key}'" in str(err.value)


def test_caption_spec_round_trip(tmp_path, spec):
    # the same spec written back loads to the same captions: the bad cases above fail for their change
    path = tmp_path / "captions.yaml"
    path.write_text(yaml.safe_dump(_spec_dict()))
    assert P.all_captions(P.load_caption_spec(path, num_classes=10)) == P.all_captions(spec)


def test_class_count_is_checked_only_when_given(tmp_path):
    d = _spec_dict()
    d["classes"] = d["classes"][:3]
    path = tmp_path / "captions.yaml"
    path.write_text(yaml.safe_dump(d))
    assert len(P.load_caption_spec(path).classes) == 3
    with pytest.raises(P.PromptFileError, match="key 'classes': must list 10 classes in label order, got 3"):
        P.load_caption_spec(path, num_classes=10)


def test_keyword_inside_another_keyword_is_refused(tmp_path):
    d = _spec_dict()
    d["keywords"]["train"] = d["keywords"]["train"][:-1] + ["negative"]
    d["keywords"]["heldout"] = ["film negative"]
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(d))
    with pytest.raises(P.PromptFileError, match="'negative' is part of the keyword 'film negative'"):
        P.load_caption_spec(path)


def test_bad_prompt_csv_names_file_and_row(tmp_path):
    path = tmp_path / "p.csv"
    path.write_text("prompt\na sneaker\n\"\"\na photo of a sneaker\n")
    with pytest.raises(P.PromptFileError, match=r"p\.csv: row 3"):
        P.read_prompt_csv(path)
    path.write_text("text\na sneaker\n")
    with pytest.raises(P.PromptFileError, match=r"p\.csv: no column 'prompt'"):
        P.read_prompt_csv(path)
    assert P.read_prompt_csv(path, column="text") == ["a sneaker"]
    with pytest.raises(P.PromptFileError, match="does not exist"):
        P.read_prompt_csv(tmp_path / "missing.csv")


def test_bad_i2p_file_names_file_and_column(tmp_path):
    good = pd.read_csv(FASHION / "i2p_analogue.csv", keep_default_na=False, dtype=str)
    path = tmp_path / "i2p.csv"
    good.drop(columns=["sd_seed"]).to_csv(path, index=False)
    with pytest.raises(P.PromptFileError, match=r"i2p\.csv: no column 'sd_seed'"):
        P.read_i2p(path)
    bad = good.copy()
    bad.loc[4, "sd_seed"] = "seven"
    bad.to_csv(path, index=False)
    with pytest.raises(P.PromptFileError, match=r"i2p\.csv: column 'sd_seed', row 6"):
        P.read_i2p(path)
    with pytest.raises(P.PromptFileError, match="'categories'.*'violence'"):
        P.read_i2p(FASHION / "i2p_analogue.csv", category="violence")
