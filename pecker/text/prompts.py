"""Prompt sets of concept forgetting, read from the data files in ``config/prompts/`` (docs/method.md
sections 1 and 6). No torch at import: the config check reads these files at parse time.

- **Caption spec** (YAML, :func:`load_caption_spec`): the classes of the embedded text teacher's training
  set in label order, each with its noun phrases (``phrases``) and the generic phrases trained on it
  (``generic``: "a shoe" on Sandal and Ankle boot, "a top" on T-shirt/top, Shirt and Coat); caption
  templates with one ``{}`` slot; the attribute keywords (``keywords.train``: used by the unlearning
  forget prompts; ``keywords.heldout``: only in the evaluation file; the teacher trains on both); and
  ``empty_fraction`` / ``attribute_fraction``. The captions are finite (:func:`all_captions`), so their
  embeddings can be computed once.
- **Celebrity prompts** (CSV, column ``prompt`` only, as the official SFD prompt lists): each forget
  prompt contains the concept; its override replaces the concept case-insensitively
  (:func:`override_prompt`).
- **Nudity set** (YAML, :func:`read_nudity_set`): ``subjects`` (bare captions the teacher knows) and
  ``negative_prompt`` (every keyword joined with ", ", the prompt that replaces "" on the forget branch);
  a forget prompt is a subject with a train keyword as prefix or suffix, overridden by the bare subject
  (:func:`nudity_forget_prompts`).
- **I2P-format evaluation file** (:func:`read_i2p`): a CSV with the columns of the ``AIML-TUDA/i2p``
  dataset (:data:`I2P_COLUMNS`); ``categories`` is comma-separated as in I2P. The analogue file
  (``config/prompts/fashion/i2p_analogue.csv``) fills ``sd_guidance_scale`` with I2P's 7 and the image
  size with 16; it leaves ``inappropriate_percentage``, ``nudity_percentage``, ``q16_percentage``,
  ``sd_safety_percentage``, ``prompt_toxicity``, ``lexica_url`` and ``sd_model`` empty: in I2P they
  describe Stable Diffusion v1.4's images of the real prompts, which have no analogue here. Only
  ``prompt``, ``categories``, ``sd_seed`` and ``sd_guidance_scale`` are read.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

#: The columns of I2P's CSV (``AIML-TUDA/i2p``), in its order.
I2P_COLUMNS = ("prompt", "categories", "hard", "inappropriate_percentage", "nudity_percentage",
               "q16_percentage", "sd_safety_percentage", "prompt_toxicity", "lexica_url", "sd_seed",
               "sd_guidance_scale", "sd_image_width", "sd_image_height", "sd_model")


class PromptFileError(ValueError):
    """A prompt file that cannot be used; the message names the file and the key or row."""


def _path(path: str | Path) -> Path:
    from pecker.config import data_file

    return data_file(path)


def read_nudity_set(path: str | Path) -> dict:
    """The nudity-style set: ``subjects``, ``negative_prompt`` and, without a caption spec, ``keywords``."""
    import yaml

    path = _path(path)
    if not path.is_file():
        raise PromptFileError(f"{path}: nudity set does not exist")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise PromptFileError(f"{path}: not valid YAML ({err})") from None
    if not isinstance(raw, dict):
        raise PromptFileError(f"{path}: a nudity set is a mapping with keys subjects and negative_prompt")
    for key in ("subjects", "negative_prompt"):
        if not raw.get(key):
            raise PromptFileError(f"{path}: key '{key}' is missing or empty")
    if not isinstance(raw["negative_prompt"], str):
        raise PromptFileError(f"{path}: key 'negative_prompt' must be a string (the keywords joined with ', ')")
    return raw


def override_prompt(prompt: str, concept: str, override: str) -> str:
    """``prompt`` with every occurrence of ``concept`` (case-insensitive, literal: regex characters in
    the concept are escaped) replaced by ``override``, as the official SFD code builds override prompts.
    A prompt without the concept is an error naming the prompt."""
    if not concept:
        raise ValueError(f"empty concept for the prompt {prompt!r}")
    pattern = re.compile(re.escape(concept), flags=re.IGNORECASE)
    if not pattern.search(prompt):
        raise ValueError(f"prompt {prompt!r} does not contain the concept {concept!r}")
    return pattern.sub(lambda _: override, prompt)


def _read_csv(path: str | Path, what: str):
    """``(resolved path, all-string DataFrame)``; a missing or unreadable file is refused naming it."""
    import pandas as pd

    path = _path(path)
    if not path.is_file():
        raise PromptFileError(f"{path}: {what} does not exist")
    try:
        return path, pd.read_csv(path, keep_default_na=False, dtype=str)
    except (pd.errors.EmptyDataError, pd.errors.ParserError) as err:
        raise PromptFileError(f"{path}: not a readable CSV ({err})") from None


def read_prompt_csv(path: str | Path, column: str = "prompt") -> list[str]:
    """The prompts of column ``column`` of a CSV file, in file order, each stripped and non-empty."""
    path, df = _read_csv(path, "prompt file")
    if column not in df.columns:
        raise PromptFileError(f"{path}: no column {column!r} (columns: {', '.join(map(str, df.columns))})")
    out = [str(p).strip() for p in df[column]]
    for i, p in enumerate(out):
        if not p:
            raise PromptFileError(f"{path}: row {i + 2} has an empty {column!r}")  # row 1 is the header
    if not out:
        raise PromptFileError(f"{path}: column {column!r} has no prompt")
    return out


@dataclass(frozen=True)
class ClassCaptions:
    """One class of the caption spec: its name, its own noun phrases and the generic phrases trained on it."""

    name: str
    phrases: tuple[str, ...]
    generic: tuple[str, ...] = ()


@dataclass(frozen=True)
class CaptionSpec:
    """A checked caption spec (:func:`load_caption_spec`); ``classes`` in label order."""

    classes: tuple[ClassCaptions, ...]
    templates: tuple[str, ...]
    keywords_train: tuple[str, ...]
    keywords_heldout: tuple[str, ...]
    empty_fraction: float = 0.1
    attribute_fraction: float = 0.25
    source: str = field(default="<spec>", compare=False)

    @property
    def keywords(self) -> tuple[str, ...]:
        """All attribute keywords, train ones first: the teacher trains on every one."""
        return self.keywords_train + self.keywords_heldout


def _fail(path, key, msg):
    raise PromptFileError(f"{path}: key '{key}': {msg}")


def _strings(path, key, value, allow_empty=False) -> tuple[str, ...]:
    """``value`` as a tuple of distinct, stripped, non-empty strings, else an error naming ``key``."""
    if value is None and allow_empty:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        _fail(path, key, f"must be a list of non-empty strings, not {value!r}")
    if not value and not allow_empty:
        _fail(path, key, "must not be empty")
    out = tuple(v.strip() for v in value)
    if len(set(out)) != len(out):
        _fail(path, key, f"has a repeated entry: {[v for v in out if out.count(v) > 1][0]!r}")
    return out


def _template_product(path, value: dict) -> tuple[str, ...]:
    """``templates: {openings: [...], endings: [...]}``: every ``opening + "{}" + ending``, opening-major.
    Entries are kept verbatim (spaces included; "" is allowed and means none), distinct, brace-free."""
    if set(value) != {"openings", "endings"}:
        _fail(path, "templates", "as a mapping, must have exactly the keys openings and endings")
    parts = {}
    for key in ("openings", "endings"):
        v = value[key]
        if not isinstance(v, list) or not v or not all(isinstance(x, str) for x in v):
            _fail(path, f"templates.{key}", f"must be a non-empty list of strings, not {v!r}")
        if len(set(v)) != len(v):
            _fail(path, f"templates.{key}", f"has a repeated entry: {[x for x in v if v.count(x) > 1][0]!r}")
        bad = [x for x in v if "{" in x or "}" in x]
        if bad:
            _fail(path, f"templates.{key}", f"{bad[0]!r} must not hold a brace")
        parts[key] = v
    return tuple(f"{o}{{}}{e}" for o in parts["openings"] for e in parts["endings"])


def load_caption_spec(path: str | Path, num_classes: int | None = None) -> CaptionSpec:
    """Read and check a caption spec (see the module docstring): a non-empty list of classes (exactly
    ``num_classes`` when given: 10 for Fashion-MNIST, the config's ``data.num_classes``), each with a
    name and at least one phrase; templates with exactly one ``{}``; distinct lower-case keywords, none
    part of another keyword, a phrase or a template; fractions in [0, 1]. Errors name the file and key."""
    import yaml

    path = _path(path)
    if not path.is_file():
        raise PromptFileError(f"{path}: caption spec does not exist")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise PromptFileError(f"{path}: not valid YAML ({err})") from None
    if not isinstance(raw, dict):
        raise PromptFileError(f"{path}: a caption spec is a mapping with keys classes, templates, keywords")
    unknown = set(raw) - {"classes", "templates", "keywords", "empty_fraction", "attribute_fraction"}
    if unknown:
        _fail(path, sorted(unknown)[0], "unknown key (known: classes, templates, keywords, empty_fraction, "
                                        "attribute_fraction)")
    classes = raw.get("classes")
    if not isinstance(classes, list) or not classes or (num_classes is not None and len(classes) != num_classes):
        got = f"{len(classes)} classes" if isinstance(classes, list) else repr(classes)
        want = f"{num_classes} classes" if num_classes is not None else "a non-empty list of classes"
        _fail(path, "classes", f"must list {want} in label order, got {got}")
    out = []
    for i, c in enumerate(classes):
        key = f"classes[{i}]"
        if not isinstance(c, dict) or set(c) - {"name", "phrases", "generic"}:
            _fail(path, key, "must be a mapping with keys name, phrases, generic")
        if not isinstance(c.get("name"), str) or not c["name"].strip():
            _fail(path, f"{key}.name", "must be a non-empty string")
        phrases = _strings(path, f"{key}.phrases", c.get("phrases"))
        generic = _strings(path, f"{key}.generic", c.get("generic"), allow_empty=True)
        both = set(phrases) & set(generic)
        if both:
            _fail(path, f"{key}.generic", f"{sorted(both)[0]!r} is also one of the class's phrases")
        out.append(ClassCaptions(c["name"].strip(), phrases, generic))
    raw_t = raw.get("templates")
    templates = _template_product(path, raw_t) if isinstance(raw_t, dict) else _strings(path, "templates", raw_t)
    for t in templates:
        if t.count("{}") != 1 or t.replace("{}", "").count("{") or t.replace("{}", "").count("}"):
            _fail(path, "templates", f"{t!r} must hold exactly one {{}} slot and no other brace")
    kw = raw.get("keywords")
    if not isinstance(kw, dict) or set(kw) - {"train", "heldout"}:
        _fail(path, "keywords", "must be a mapping with keys train and heldout")
    train = _strings(path, "keywords.train", kw.get("train"))
    held = _strings(path, "keywords.heldout", kw.get("heldout"), allow_empty=True)
    allk = train + held
    for k in allk:
        where = "keywords.train" if k in train else "keywords.heldout"
        if k != k.lower():
            _fail(path, where, f"{k!r} must be lower-case")
        if allk.count(k) > 1:
            _fail(path, "keywords", f"{k!r} is both a train and a held-out keyword")
        other = [o for o in allk if o != k and k in o]
        if other:
            _fail(path, where, f"{k!r} is part of the keyword {other[0]!r}")
        words = [w for c in out for w in c.phrases + c.generic] + list(templates)
        hit = [w for w in words if k in w.lower()]
        if hit:
            _fail(path, where, f"{k!r} is part of the phrase or template {hit[0]!r}")
    fr = {}
    for key, default in (("empty_fraction", 0.1), ("attribute_fraction", 0.25)):
        v = raw.get(key, default)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= 1:
            _fail(path, key, f"{v!r} is not a fraction in [0, 1]")
        fr[key] = float(v)
    return CaptionSpec(tuple(out), templates, train, held, source=str(path), **fr)


def captions_for(spec: CaptionSpec, label: int, attribute: bool) -> list[str]:
    """Every caption of class ``label``: each of its phrases then generic phrases, in each template
    (phrase-major). With ``attribute``, instead each of those with every keyword (all of them, train
    and held-out) as prefix (``"kw caption"``), then each with every keyword as suffix
    (``"caption, kw"``)."""
    if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label < len(spec.classes):
        raise ValueError(f"label {label!r} is not a class of the caption spec {spec.source} "
                         f"(0..{len(spec.classes) - 1})")
    c = spec.classes[label]
    plain = [t.format(p) for p in c.phrases + c.generic for t in spec.templates]
    if not attribute:
        return plain
    return ([f"{k} {cap}" for cap in plain for k in spec.keywords]
            + [f"{cap}, {k}" for cap in plain for k in spec.keywords])


def all_captions(spec: CaptionSpec) -> list[str]:
    """The sorted set of every training caption (all labels, with and without attribute), plus ""
    (the empty prompt): the finite prompt set the teacher trains on."""
    caps = {cap for y in range(len(spec.classes)) for a in (False, True) for cap in captions_for(spec, y, a)}
    return sorted(caps | {""})


def retain_prompts(spec: CaptionSpec, exclude_labels=(), attribute: bool = False) -> list[str]:
    """The captions (without keyword unless ``attribute``) of every class not in ``exclude_labels``,
    in label order, each once (a generic phrase shared by classes counts once)."""
    exclude = set(exclude_labels)
    bad = [y for y in exclude if isinstance(y, bool) or not isinstance(y, int) or not 0 <= y < len(spec.classes)]
    if bad:
        raise ValueError(f"exclude_labels: {bad[0]!r} is not a class of the caption spec {spec.source}")
    out = []
    for y in range(len(spec.classes)):
        if y not in exclude:
            out += captions_for(spec, y, attribute)
    return list(dict.fromkeys(out))


def nudity_forget_prompts(spec: CaptionSpec | None, nudity: dict | str | Path) -> tuple[list[str], list[str]]:
    """Every forget prompt of the nudity-style set (each subject x each keyword, prefix then suffix) and,
    aligned, its override (the bare subject). ``nudity``: the set's mapping or its file. The keywords
    are the set's own ``keywords`` (Stable Diffusion) or the caption spec's **train** keywords; with a
    caption spec each subject must be, as is, a caption the teacher trains on."""
    where = "nudity set"
    if isinstance(nudity, (str, Path)):
        where, nudity = str(_path(nudity)), read_nudity_set(nudity)
    if not isinstance(nudity, dict):
        raise PromptFileError(f"{where}: must be a mapping with keys subjects and negative_prompt")
    subjects = nudity.get("subjects")
    if not isinstance(subjects, list) or not subjects:
        raise PromptFileError(f"{where}: key 'subjects' must be a non-empty list")
    keywords = nudity.get("keywords")
    if keywords is not None:
        if not isinstance(keywords, list) or not keywords or not all(isinstance(k, str) and k for k in keywords):
            raise PromptFileError(f"{where}: key 'keywords' must be a non-empty list of strings")
    elif spec is None:
        raise PromptFileError(f"{where}: key 'keywords' is missing (without a caption spec the set names its keywords)")
    else:
        keywords = list(spec.keywords_train)
    known = set(all_captions(spec)) if spec is not None else None
    forget, override = [], []
    for i, s in enumerate(subjects):
        if not isinstance(s, str) or not s or (known is not None and s not in known):
            raise PromptFileError(f"{where}: key 'subjects[{i}]': subject {s!r} is not a caption the teacher "
                                  f"trains on ({spec.source if spec is not None else 'no caption spec'})")
        for k in keywords:
            forget += [f"{k} {s}", f"{s}, {k}"]
            override += [s, s]
    return forget, override


def read_i2p(path: str | Path, category: str = "sexual"):
    """The rows of an I2P-format CSV whose ``categories`` (comma-separated) include ``category``, in
    file order: a DataFrame with columns ``prompt``, ``sd_seed`` (int) and ``sd_guidance_scale`` (float).
    Errors name the file, and the column and row where a value is wrong."""
    import pandas as pd

    path, df = _read_csv(path, "I2P prompt file")
    for col in ("prompt", "categories", "sd_seed", "sd_guidance_scale"):
        if col not in df.columns:
            raise PromptFileError(f"{path}: no column {col!r} (an I2P-format file has {', '.join(I2P_COLUMNS)})")
    df["row"] = range(2, len(df) + 2)  # file line of each row (line 1 is the header)
    cats = df["categories"].map(lambda v: {c.strip() for c in str(v).split(",")})
    df = df[cats.map(lambda s: category in s)].reset_index(drop=True)
    if df.empty:
        raise PromptFileError(f"{path}: column 'categories': no row of category {category!r}")
    for col, kind in (("sd_seed", int), ("sd_guidance_scale", float)):
        values = []
        for row, v in zip(df["row"], df[col]):
            try:
                x = kind(v.strip())
            except ValueError:
                raise PromptFileError(f"{path}: column {col!r}, row {row}: {v!r} is not an {kind.__name__}") from None
            values.append(x)
        df[col] = pd.Series(values, dtype="int64" if kind is int else "float64")
    df["prompt"] = df["prompt"].str.strip()
    empty = df.loc[df["prompt"] == "", "row"]
    if len(empty):
        raise PromptFileError(f"{path}: column 'prompt', row {empty.iloc[0]}: empty prompt")
    return df[["prompt", "sd_seed", "sd_guidance_scale"]]


def keywords_in(prompt: str, keywords) -> list[str]:
    """The keywords that occur in ``prompt`` as a whole phrase (bounded by the ends, spaces or commas)."""
    return [k for k in keywords if re.search(rf"(^|[\s,]){re.escape(k)}($|[\s,])", prompt)]


def held_out_keywords_present(df, spec: CaptionSpec):
    """Per row of ``df`` (column ``prompt``): whether its prompt carries at least one held-out keyword
    of ``spec`` and no train keyword (a boolean Series aligned with ``df``)."""
    return df["prompt"].map(lambda p: bool(keywords_in(p, spec.keywords_heldout))
                            and not keywords_in(p, spec.keywords_train))
