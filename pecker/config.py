"""One source of truth for configuration: load, override, validate, fill defaults, hash.

A config file holds global keys plus a ``datasets`` mapping, one entry per dataset, each with the
sections ``data``, ``unet``, ``diffusion``, ``teacher``, ``classifier``, ... that the schema in
``pecker/schema/config.yaml`` describes. Snakemake and the CLI both go through :func:`resolve`, so a wrong
key or type fails the same way, naming the offending key, before any job runs.
"""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import Any, Iterable, Mapping

import jsonschema
import yaml

from pecker.io import canonical_json, is_full_hash

REPO_ROOT = Path(__file__).resolve().parents[1]


def is_asset_path(path: str | Path) -> bool:
    """A file of a fetched asset (``{data_dir}/assets/NAME/...``, pecker/assets.py): it may not exist
    before its fetch job ran, and its content is governed by the asset's sha256 pins and manifest, so
    it is checked and hashed by path."""
    parts = Path(path).parts
    return "assets" in parts[:-2]


def data_file(path: str | Path) -> Path:
    """A file the config names (prompt sets, caption specs): absolute as given; relative to the working
    directory when it exists there, else to the repository (``config/prompts/...`` works from any
    Snakemake working directory). Config values stay relative, so stage hashes do not depend on
    where the clone lives."""
    path = Path(path)
    if path.is_absolute() or path.exists():
        return path
    return REPO_ROOT / path
SCHEMA_PATH = Path(__file__).resolve().parent / "schema" / "config.yaml"


class ConfigError(ValueError):
    """A config value is missing, unknown or of the wrong type."""


def load_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    with path.open() as fh:
        data = yaml.safe_load(fh) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(data).__name__}")
    return data


def deep_merge(base: dict, update: Mapping) -> dict:
    """Recursive dict merge (the same rule Snakemake applies to several config files)."""
    out = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def parse_override(text: str) -> dict:
    """``a.b.c=value`` -> ``{"a": {"b": {"c": value}}}``, value parsed as YAML."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like dotted.key=value")
    key, raw = text.split("=", 1)
    value = yaml.safe_load(raw)
    out: dict = {}
    node = out
    parts = key.strip().split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return out


def load_schema() -> dict:
    return load_yaml(SCHEMA_PATH)


def _validator_with_defaults():
    base = jsonschema.Draft202012Validator

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for name, sub in properties.items():
                if "default" in sub and name not in instance:
                    instance[name] = copy.deepcopy(sub["default"])
        yield from base.VALIDATORS["properties"](validator, properties, instance, schema)

    # JSON schema counts 2.0 as an integer; a float where a count is meant fails later in a job
    def is_int(checker, instance):
        return isinstance(instance, int) and not isinstance(instance, bool)

    return jsonschema.validators.extend(base, {"properties": set_defaults},
                                        type_checker=base.TYPE_CHECKER.redefine("integer", is_int))


def validate(cfg: dict, schema: dict | None = None) -> dict:
    """Validate ``cfg`` in place (filling schema defaults) and return it.

    Raises :class:`ConfigError` whose message names the offending key path.
    """
    schema = schema or load_schema()
    validator = _validator_with_defaults()(schema)
    errors = sorted(validator.iter_errors(cfg), key=lambda e: list(e.absolute_path))
    if errors:
        lines = []
        for err in errors[:10]:
            where = ".".join(str(p) for p in err.absolute_path) or "<top level>"
            lines.append(f"  config key '{where}': {err.message}")
        raise ConfigError("invalid configuration:\n" + "\n".join(lines))
    _check_semantics(cfg)
    return cfg


def _nonfinite_keys(obj, where: str = "") -> Iterable[str]:
    """Dotted keys of every NaN or infinite number in a config (JSON schema's bounds let them through)."""
    import math

    if isinstance(obj, Mapping):
        for k, v in obj.items():
            yield from _nonfinite_keys(v, f"{where}.{k}" if where else str(k))
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from _nonfinite_keys(v, f"{where}[{i}]")
    elif isinstance(obj, float) and not math.isfinite(obj):
        yield where


def _string_values(obj, where: str = "") -> Iterable[tuple[str, str]]:
    """``(dotted key, value)`` of every string in a config."""
    if isinstance(obj, Mapping):
        for k, v in obj.items():
            yield from _string_values(v, f"{where}.{k}" if where else str(k))
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from _string_values(v, f"{where}[{i}]")
    elif isinstance(obj, str):
        yield where, obj


def asset_references(cfg: dict, dataset: str | None = None) -> dict[str, list[str]]:
    """Asset name -> the config keys whose value is a path inside it (``{data_dir}/assets/NAME/...``),
    over one dataset's section or the whole config (pecker/assets.py)."""
    root = Path(cfg.get("data_dir", "data")) / "assets"
    scope = {"datasets": {dataset: dataset_config(cfg, dataset)}} if dataset else {"datasets": cfg.get("datasets", {})}
    refs: dict[str, list[str]] = {}
    for key, value in _string_values(scope):
        try:
            rel = Path(value).relative_to(root)
        except ValueError:
            continue
        if rel.parts:
            refs.setdefault(rel.parts[0], []).append(key)
    return refs


def asset_manifest(cfg: dict, path: str) -> str:
    """The manifest of the asset that ``path`` (a file inside ``{data_dir}/assets/NAME/``) belongs to."""
    root = Path(cfg.get("data_dir", "data")) / "assets"
    try:
        name = Path(path).relative_to(root).parts[0]
    except (ValueError, IndexError):
        raise ConfigError(f"{path!r} is not a file of a fetched asset (a path inside {root}/NAME/)") from None
    return str(root / name / "manifest.json")


def _check_asset_references(cfg: dict) -> None:
    known = cfg.get("assets") or {}
    for name, spec in known.items():
        if "url" in spec and len(spec["files"]) != 1:
            raise ConfigError(f"config key 'assets.{name}.files': a url asset is one file, got {len(spec['files'])}")
        unknown = sorted(set(spec.get("sha256") or {}) - set(spec["files"]))
        if unknown:
            raise ConfigError(f"config key 'assets.{name}.sha256': {unknown[0]!r} is not one of the asset's files")
    for ds_name, ds in (cfg.get("datasets") or {}).items():
        init = (ds.get("unlearn") or {}).get("generator_init")
        pickles = [("unlearn.generator_init.pickle", init["pickle"])] if init else []
        for method, m in ((ds.get("unlearn") or {}).get("methods") or {}).items():
            released = ((m or {}).get("fisher") or {}).get("released")
            if released:
                pickles.append((f"unlearn.methods.{method}.fisher.released", released))
        for key, path in pickles:  # a pickle is read only after its asset's checksum (never a loose file)
            try:
                asset_manifest(cfg, path)
            except ConfigError as err:
                raise ConfigError(f"config key 'datasets.{ds_name}.{key}': {err}") from None
    for name, keys in asset_references(cfg).items():
        if name not in known:
            raise ConfigError(f"config key '{keys[0]}': a path inside asset {name!r}, which is not configured under "
                              f"'assets' (configured: {', '.join(sorted(known)) or 'none'})")


def _check_semantics(cfg: dict) -> None:
    """Cross-key checks that JSON schema cannot express."""
    bad = list(_nonfinite_keys(cfg))
    if bad:
        raise ConfigError(f"config key '{bad[0]}': must be a finite number"
                          + (f" (also: {', '.join(bad[1:4])})" if len(bad) > 1 else ""))
    _check_asset_references(cfg)
    for name, ds in cfg.get("datasets", {}).items():
        unet = ds["unet"]
        n_levels = len(unet["channel_mult"])
        res = ds["data"]["resolution"]
        if res % (2 ** (n_levels - 1)):
            raise ConfigError(
                f"config key 'datasets.{name}.data.resolution': {res} is not divisible by "
                f"2**(len(unet.channel_mult)-1) = {2 ** (n_levels - 1)}"
            )
        for r in unet["attention_resolutions"]:
            if r not in [res // 2**i for i in range(n_levels)]:
                raise ConfigError(
                    f"config key 'datasets.{name}.unet.attention_resolutions': {r} is not one of "
                    f"the UNet's resolutions {[res // 2**i for i in range(n_levels)]}"
                )
        groups = unet.get("norm_num_groups", 32)
        for m in unet["channel_mult"]:
            if (unet["base_channels"] * m) % groups:
                raise ConfigError(
                    f"config key 'datasets.{name}.unet.norm_num_groups': {groups} does not divide the "
                    f"{unet['base_channels'] * m} channels of a level (base_channels x channel_mult)"
                )
        diff = ds.get("diffusion") or {}
        b0, b1 = diff.get("beta_start", 1e-4), diff.get("beta_end", 0.02)
        if not b0 < b1 < 1:
            raise ConfigError(f"config key 'datasets.{name}.diffusion.beta_end': need beta_start < beta_end < 1 "
                              f"(got {b0}, {b1})")
        _check_data_source(name, ds["data"], ds.get("classifier"))
        T = diff.get("num_train_timesteps", 1000)
        _check_samplers(name, ds, T)
        _check_teacher_file(name, ds)
        _check_text(name, ds)
        ecfg = ds.get("evaluate") or {}
        if ecfg.get("is_source") == "inception" and ecfg.get("extractor") != "inception-v3-compat":
            raise ConfigError(f"config key 'datasets.{name}.evaluate.is_source': 'inception' needs Inception logits, "
                              f"which extractor {ecfg.get('extractor')!r} does not have (use inception-v3-compat "
                              "or is_source classifier)")
        unl = ds.get("unlearn")
        if unl:
            k = ds["data"]["num_classes"]
            for key in ("forget_class", "cover_class"):
                if not 0 <= unl[key] < k:
                    raise ConfigError(
                        f"config key 'datasets.{name}.unlearn.{key}': {unl[key]} is not a class "
                        f"index in [0, {k})"
                    )
            _check_unlearn(name, unl, ds, T)
    _check_report(cfg)


def _check_text(name: str, ds: dict) -> None:
    """A text dataset has a text-conditional UNet, concept tasks, methods that name one, its concept
    evaluation section and the files they read; a class dataset has none of these."""
    where = f"datasets.{name}"
    text, unet = ds.get("text"), ds["unet"]
    unl = ds.get("unlearn") or {}
    text_arch = unet.get("arch") == "unet2d_condition"
    if not text:
        if text_arch:
            raise ConfigError(f"config key '{where}.unet.arch': unet2d_condition needs a text section ({where}.text)")
        if unl.get("tasks") or any((m or {}).get("task") for m in (unl.get("methods") or {}).values()):
            raise ConfigError(f"config key '{where}.unlearn.tasks': concept tasks need a text section ({where}.text)")
        for method, m in (unl.get("methods") or {}).items():
            if (m or {}).get("kind") == "esd":
                raise ConfigError(f"config key '{where}.unlearn.methods.{method}.kind': esd erases a concept of a "
                                  f"text-to-image model; this dataset has no text section ({where}.text)")
            if ((m or {}).get("fisher") or {}).get("released"):
                raise ConfigError(f"config key '{where}.unlearn.methods.{method}.fisher.released': SA's released "
                                  "Fisher is Stable Diffusion's; a class dataset computes its own (set it to null)")
        return
    if not text_arch:
        raise ConfigError(f"config key '{where}.unet.arch': a text dataset needs unet2d_condition (got {unet.get('arch')!r})")
    if unet.get("cross_attention_dim") is None:
        raise ConfigError(f"config key '{where}.unet.cross_attention_dim': required with a text section")
    if text["source"] == "minilm_wheel" and not text.get("captions"):
        raise ConfigError(f"config key '{where}.text.captions': the embedded stack trains on a caption spec")
    files = [("text.captions", text.get("captions"))]
    tasks = unl.get("tasks") or {}
    if unl and not tasks:
        raise ConfigError(f"config key '{where}.unlearn.tasks': a text dataset forgets concepts; name at least one task")
    for tname, t in tasks.items():
        files.append((f"unlearn.tasks.{tname}.prompts", t["prompts"]))
        files.append((f"unlearn.tasks.{tname}.retain", t.get("retain")))
    for method, m in (unl.get("methods") or {}).items():
        m = m or {}
        if m.get("kind", "sfd") not in ("sfd", "esd", "sa"):
            raise ConfigError(f"config key '{where}.unlearn.methods.{method}.kind': {m['kind']!r} is a class-forgetting "
                              "baseline; a text dataset runs the SFD loop (kind sfd), ESD (kind esd) and SA (kind sa)")
        if method in ("teacher", "sld"):
            raise ConfigError(f"config key '{where}.unlearn.methods.{method}': the name is taken by a row of Tables "
                              "2-3 (the teacher, SLD-Medium); rename the method")
        if m.get("task") not in tasks:
            raise ConfigError(f"config key '{where}.unlearn.methods.{method}.task': {m.get('task')!r} is not a task "
                              f"of {where}.unlearn.tasks ({', '.join(sorted(tasks)) or 'none'})")
        if (m.get("kind") == "sa" and tasks[m["task"]]["type"] != "celebrity"
                and not (m.get("surrogate") or {}).get("prompt")):
            raise ConfigError(f"config key '{where}.unlearn.methods.{method}.surrogate.prompt': SA on a "
                              f"{tasks[m['task']]['type']} task needs the prompt whose samples stand in for the "
                              "concept (SA's recipe: clothed people); only a celebrity task has a default (its override)")
    ecfg = (ds.get("evaluate") or {}).get("concept")
    if ecfg is None:
        raise ConfigError(f"config key '{where}.evaluate.concept': required with a text section (Tables 2-3)")
    if ecfg.get("detectors") == "paper":
        if any(t["type"] == "celebrity" for t in tasks.values()) and not ecfg.get("gcd"):
            raise ConfigError(f"config key '{where}.evaluate.concept.gcd': detectors paper scores celebrity tasks with "
                              "the Giphy Celebrity Detector; set gcd.resources (its model folder)")
        if any(t["type"] == "nudity" for t in tasks.values()) and not ecfg.get("q16"):
            raise ConfigError(f"config key '{where}.evaluate.concept.q16': detectors paper scores nudity with Q16; set "
                              "q16.clip and q16.prompts")
    elif ds["data"]["source"] == "none":
        raise ConfigError(f"config key '{where}.evaluate.concept.detectors': a dataset without training images "
                          "(data.source none) has no classifier for the embedded detectors; use detectors: paper")
    if any(t["type"] == "nudity" for t in tasks.values()):
        if not ecfg.get("i2p_prompts"):
            raise ConfigError(f"config key '{where}.evaluate.concept.i2p_prompts': a nudity task is scored on an "
                              "I2P-format prompt file")
        files.append(("evaluate.concept.i2p_prompts", ecfg["i2p_prompts"]))
    for key, path in files:
        if path and not is_asset_path(path) and not data_file(path).is_file():
            raise ConfigError(f"config key '{where}.{key}': file {path} does not exist (relative paths: to the "
                              f"working directory or the repository {REPO_ROOT})")


def text_files(ds: dict) -> dict[str, str]:
    """``{path: sha256}`` of every file a text dataset's config names (its prompt sets enter the stage
    hashes through their content)."""
    from pecker.io import sha256_file

    paths = [(ds.get("text") or {}).get("captions")]
    for t in ((ds.get("unlearn") or {}).get("tasks") or {}).values():
        paths += [t.get("prompts"), t.get("retain")]
    paths.append(((ds.get("evaluate") or {}).get("concept") or {}).get("i2p_prompts"))
    return {str(p): "asset file (pinned by its manifest)" if is_asset_path(p) else sha256_file(data_file(p))
            for p in paths if p}


def _check_data_source(name: str, data: dict, classifier: dict | None = None) -> None:
    """Channels and classes the source can give (colour is never turned grey)."""
    from pecker.data.sources import SOURCES

    if data["source"] == "none":
        return
    if data["channels"] == 4:
        raise ConfigError(f"config key 'datasets.{name}.data.channels': 4 is a latent's channel count, only for "
                          "data.source none")
    if classifier is None:
        raise ConfigError(f"config key 'datasets.{name}.classifier': required (the UA classifier / the embedded "
                          "detectors' classifier); only a dataset with data.source none has none")
    src, where = SOURCES[data["source"]], f"datasets.{name}.data"
    if src.channels == 3 and data["channels"] == 1:
        raise ConfigError(f"config key '{where}.channels': 1 but source {data['source']} has 3 (colour) channels; "
                          "colour images are not converted to grey, use channels: 3")
    if data.get("num_classes", 10) != src.num_classes:
        raise ConfigError(f"config key '{where}.num_classes': {data.get('num_classes')} but source {data['source']} "
                          f"has {src.num_classes} classes")


def _check_samplers(name: str, ds: dict, T: int) -> None:
    """Every DDIM sampler takes at most the schedule's ``T`` steps (the scheduler refuses more, in a job)."""
    where = f"datasets.{name}"
    samplers = [("teacher.sample", (ds.get("teacher") or {}).get("sample")),
                ("evaluate.teacher_sampler", (ds.get("evaluate") or {}).get("teacher_sampler"))]
    for method, m in ((ds.get("unlearn") or {}).get("methods") or {}).items():
        samplers.append((f"unlearn.methods.{method}.replay", (m or {}).get("replay")))
        mask = (m or {}).get("mask") or {}
        if mask.get("enabled") and mask.get("source") == "teacher" and mask.get("teacher_sampling_steps", 50) > T:
            raise ConfigError(f"config key '{where}.unlearn.methods.{method}.mask.teacher_sampling_steps': "
                              f"{mask['teacher_sampling_steps']} DDIM steps, beyond the schedule's {T} timesteps")
    for key, s in samplers:
        if s and s.get("sampler", "ddim") == "ddim" and s.get("steps", 50) > T:
            raise ConfigError(f"config key '{where}.{key}.steps': {s['steps']} DDIM steps, beyond the schedule's "
                              f"{T} timesteps ({where}.diffusion.num_train_timesteps)")


def _check_teacher_file(name: str, ds: dict) -> None:
    """``teacher.source: file | published`` names the file (or where to fetch it) and its full sha256;
    a published SA checkpoint needs the network it was trained with."""
    teacher = ds.get("teacher") or {}
    if teacher.get("baselines_model") and teacher.get("source") != "sd_folder":
        raise ConfigError(f"config key 'datasets.{name}.teacher.baselines_model': the baselines' own Stable Diffusion "
                          "UNet needs teacher.source sd_folder (the concept half at paper scale)")
    if teacher.get("source") == "sd_folder" and (ds.get("text") or {}).get("source") != "sd_folder":
        raise ConfigError(f"config key 'datasets.{name}.teacher.source': sd_folder takes the UNet of the Stable "
                          "Diffusion folder text.model, so text.source must be sd_folder")
    if teacher.get("source") not in ("file", "published"):
        return
    if teacher["source"] == "published" and (ds.get("unet") or {}).get("arch") != "ddpm_conditional":
        raise ConfigError(f"config key 'datasets.{name}.unet.arch': teacher.source published needs ddpm_conditional "
                          "(the network of the SA authors' checkpoints)")
    f = teacher.get("file") or {}
    where = f"datasets.{name}.teacher.file"
    if not (f.get("path") or f.get("url")):
        raise ConfigError(f"config key '{where}.path': teacher.source is {teacher['source']}, but neither file.path "
                          "nor file.url is set")
    if not is_full_hash(f.get("sha256")):
        raise ConfigError(f"config key '{where}.sha256': {f.get('sha256')!r} is not a full 64-digit sha256 (the file "
                          "is verified against it before it is read)")


def _check_report(cfg: dict) -> None:
    """The efficiency table's reference methods are configured methods (else the report fails last).
    The efficiency table is of class forgetting: text datasets' methods do not count."""
    rep = cfg.get("report") or {}
    methods = {m for ds in cfg.get("datasets", {}).values() if not ds.get("text")
               for m in ((ds.get("unlearn") or {}).get("methods") or {})}
    if not methods:
        return
    if rep.get("reference_method", "sfd") not in methods:
        raise ConfigError(f"config key 'report.reference_method': {rep.get('reference_method')!r} is not a configured "
                          f"method ({', '.join(sorted(methods))})")
    for method, ref in (rep.get("references") or {}).items():
        for value in (method, ref):
            if value not in methods:
                raise ConfigError(f"config key 'report.references.{method}': {value!r} is not a configured method")


def _check_unlearn(name: str, unl: dict, ds: dict, T: int) -> None:
    """Every method's settings resolve, and its timesteps lie within the schedule's ``T``."""
    from pecker.unlearn.settings import method_settings

    for method in unl.get("methods") or {}:
        s = method_settings(unl, method, name, ds.get("teacher"))
        if s.get("kind", "sfd") != "sfd":
            continue
        where = f"datasets.{name}.unlearn"
        checks = (("t_init", s["t_init"] < T), ("t_max", s["t_max"] <= T),
                  ("mask.t_max", s["mask"]["t_max"] <= T))
        for key, ok in checks:
            if not ok:
                raise ConfigError(f"config key '{where}.{key}' (method {method}): beyond the schedule's "
                                  f"{T} timesteps (datasets.{name}.diffusion.num_train_timesteps)")


def resolve(
    files: Iterable[str | Path] = (),
    overrides: Iterable[str] = (),
    base: dict | None = None,
) -> dict:
    """Merge config files (left to right), ``key=value`` overrides, validate, fill defaults."""
    cfg: dict = copy.deepcopy(base) if base else {}
    for f in files:
        cfg = deep_merge(cfg, load_yaml(f))
    for o in overrides:
        cfg = deep_merge(cfg, parse_override(o))
    return validate(cfg)


def dataset_config(cfg: dict, dataset: str) -> dict:
    try:
        return cfg["datasets"][dataset]
    except KeyError:
        known = ", ".join(sorted(cfg.get("datasets", {}))) or "none"
        raise ConfigError(
            f"dataset {dataset!r} is not configured under 'datasets' (configured: {known})"
        ) from None


def config_hash(obj: Any, length: int = 16) -> str:
    """Stable hash of a (sub-)config: sha256 of its canonical JSON."""
    return hashlib.sha256(canonical_json(obj).encode()).hexdigest()[:length]


def resolved_text(cfg: dict, dataset: str) -> str:
    """The resolved config restricted to one dataset, as the YAML text the CLI reads."""
    sub = {k: v for k, v in cfg.items() if k != "datasets"}
    sub["datasets"] = {dataset: dataset_config(cfg, dataset)}
    return yaml.safe_dump(sub, sort_keys=True)


def resolved_path(cfg: dict, dataset: str, store: str | Path) -> Path:
    """Where :func:`store_resolved` keeps this dataset's resolved config: ``store/<content hash>.yaml``.

    The name is the hash of the content, so a file in the store never changes once written: an
    invocation with another config (a dry run, a refused run, a concurrent run) gets another file
    and can never change what a running job reads.
    """
    return Path(store) / f"{config_hash(resolved_text(cfg, dataset))}.yaml"


def store_resolved(cfg: dict, dataset: str, store: str | Path) -> Path:
    """Write the resolved config to its content-addressed path (atomically; once)."""
    from pecker.io import atomic_write_text

    path, text = resolved_path(cfg, dataset, store), resolved_text(cfg, dataset)
    if not path.is_file() or path.read_text() != text:  # absent, or a truncated leftover
        atomic_write_text(path, text)
    return path
