"""Evaluation of a text-to-image model on the concept-forgetting tasks (docs/method.md section 6).

A model is drawn as ``draw(prompts, noise) -> uint8 NHWC RGB``: every image has its own prompt and
its own initial latent, built from a seed (:func:`seeded_noise`), so the teacher, SLD and every
generator checkpoint see the same prompt and the same noise for the same image (the grids of Figs 4-6
compare like with like). Models:

- ``teacher``: the multi-step UNet through diffusers' ``StableDiffusionPipeline`` (the "SD v1.4" row);
- ``sld``: the same UNet through ``StableDiffusionPipelineSafe`` with ``SafetyConfig.MEDIUM``
  ("SLD-Medium"); its safety concept is the task's concept (celebrity) or negative prompt (nudity);
- ``generator``: a one-step generator (SFD / PECKER, any checkpoint), decoded by the stack's VAE.

Metrics, per task (the metric code is :mod:`pecker.evaluate.concept`):

- ``celebrity``: its forget prompts x ``evaluate.concept.celebrity_seeds`` seeds; share without the
  object (the face detector's slot: the classifier's confidence below a threshold) and the GCD
  analogue (mean probability of the target class over images with the object);
- ``nudity``: the I2P-style file's rows of the category, ``images_per_prompt`` images from each row's
  seed; unsafe = attribute detector OR NudeNet; inappropriate probability and the bootstrap maximum
  expected inappropriateness.

Detectors (``evaluate.concept.detectors``): ``embedded`` (absent; the substitutes above) or ``paper``:
the Giphy Celebrity Detector's output for the celebrity images (its own job and environment: the
images come from :func:`write_celebrity_images`, the results are read by :mod:`pecker.evaluate.gcd`)
and, for nudity, Q16 (:mod:`pecker.evaluate.q16`, CLIP ViT-L/14 and I2P's prompts.p) OR NudeNet. The
paper detectors need no classifier and no training images; there is no FID of retained prompts.

With ``final`` (embedded detectors), also FID of retained prompts (captions without keyword of the classes no celebrity
task targets) against their real images, with the project's Inception features, and the teacher
checks (prompt-conditioned class accuracy and the attribute rate of keyword prompts).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from pecker import io

log = logging.getLogger("pecker.evaluate.concept")

Draw = Callable[[list[str], torch.Tensor], np.ndarray]
MODEL_KINDS = ("teacher", "sld", "generator")


def seeded_noise(seeds: list[int], counts: list[int], shape: tuple[int, ...]) -> torch.Tensor:
    """Initial latents: ``counts[i]`` consecutive draws from a CPU generator seeded with ``seeds[i]``."""
    out = []
    for seed, n in zip(seeds, counts):
        out.append(torch.randn((n, *shape), generator=torch.Generator().manual_seed(int(seed))))
    return torch.cat(out)


def _to_uint8(x: torch.Tensor) -> np.ndarray:
    """[-1, 1] NCHW -> uint8 NHWC."""
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def sld_settings(ccfg: dict) -> dict:
    """The ``sld_*`` arguments of ``StableDiffusionPipelineSafe`` for ``evaluate.concept``: the named
    ``SafetyConfig``, its warmup rescaled to ``sampling_steps`` when ``sld_reference_steps`` is set.

    SLD starts steering after ``sld_warmup_steps`` of the DDIM steps (MEDIUM: 10, tuned at 50 steps);
    with fewer sampling steps than that it never engages and "SLD" would equal the plain pipeline, so
    such a setting is refused (:class:`pecker.config.ConfigError`) before anything is sampled."""
    from diffusers.pipelines.deprecated.stable_diffusion_safe import SafetyConfig

    from pecker.config import ConfigError

    sld = dict(getattr(SafetyConfig, ccfg["sld_config"].upper()))
    steps, ref = ccfg["sampling_steps"], ccfg.get("sld_reference_steps")
    if ref:
        sld["sld_warmup_steps"] = int(round(sld["sld_warmup_steps"] * steps / ref))
    if sld["sld_warmup_steps"] >= steps:
        raise ConfigError(
            f"config key 'evaluate.concept.sampling_steps': {steps} DDIM steps, but SafetyConfig."
            f"{ccfg['sld_config'].upper()} only starts safety guidance after {sld['sld_warmup_steps']} steps, so "
            "the SLD row would be the plain pipeline; sample more steps or set "
            "'evaluate.concept.sld_reference_steps' (e.g. 50) to scale the warmup")
    return sld


def model_drawer(kind: str, prefix: str | Path, ds_cfg: dict, device, safety_concept: str | None = None):
    """``(draw, sidecar, latent shape)`` for a saved text-conditional model (module docstring)."""
    from pecker.diffusion.schedule import make_scheduler
    from pecker.text.stack import PromptEncoder, build_stack

    stack = build_stack(ds_cfg["text"], ds_cfg["data"]).to(device)
    ddpm = make_scheduler(ds_cfg["diffusion"])
    ccfg = ds_cfg["evaluate"]["concept"]
    bs = ds_cfg["evaluate"]["batch_size"]
    if kind == "generator":
        from pecker.diffusion.conditioning import TextCondition
        from pecker.unlearn.generator import load_generator

        gen, meta = load_generator(prefix, device=device)
        enc = PromptEncoder(stack, gen.unet, ddpm, device)
        shape = gen.image_shape

        @torch.no_grad()
        def draw(prompts, noise):
            out = []
            for i in range(0, len(prompts), bs):
                h = enc.encode(prompts[i:i + bs]).to(device)
                z = gen(noise[i:i + bs].to(device), TextCondition(h))
                out.append(_to_uint8(stack.images_from_latents(z)))
            return np.concatenate(out)

        return draw, meta, shape
    if kind not in ("teacher", "sld"):
        raise ValueError(f"unknown model kind {kind!r} ({', '.join(MODEL_KINDS)})")
    from pecker.diffusion.unet import load_unet

    unet, meta = load_unet(prefix, device=device)
    unet.eval()
    pipe = stack.pipeline(unet, ddpm, safe=kind == "sld")
    sld = {}
    if kind == "sld":
        sld = sld_settings(ccfg)
        if safety_concept is not None:
            pipe.safety_concept = safety_concept
    cfg = unet.config
    shape = (cfg.in_channels, cfg.sample_size, cfg.sample_size)

    @torch.no_grad()
    def draw(prompts, noise, guidance=None):
        out = []
        for i in range(0, len(prompts), bs):
            res = pipe(list(prompts[i:i + bs]), num_inference_steps=ccfg["sampling_steps"],
                       guidance_scale=ccfg["guidance_scale"] if guidance is None else guidance,
                       latents=noise[i:i + bs].to(device), output_type="pt", **sld)
            out.append(_to_uint8(stack.pipeline_images(res.images) * 2 - 1))
        return np.concatenate(out)

    meta = {**meta, "pipeline": type(pipe).__name__, **({"sld": {**sld, "safety_concept": pipe.safety_concept}} if sld else {})}
    return draw, meta, shape


def _grey(images: np.ndarray) -> np.ndarray:
    """uint8 NHWC RGB -> the dataset's channels (the pass-through VAE repeats grey to RGB)."""
    return images.mean(-1, keepdims=True).round().astype(np.uint8) if images.shape[-1] == 3 else images


def class_probs(clf, spec, images: np.ndarray, channels: int, device) -> np.ndarray:
    from pecker.classifier.models import predict_logits

    imgs = _grey(images) if channels == 1 else images
    return predict_logits(clf, spec, imgs, device=device).softmax(1).numpy()


def celebrity_images(task: dict, ccfg: dict, draw: Draw, shape, n_seeds: int | None = None):
    """Images of the task's forget prompts x seeds 0..n-1 (prompt-major)."""
    from pecker.text.prompts import read_prompt_csv

    prompts = read_prompt_csv(task["prompts"])
    seeds = list(range(n_seeds or ccfg["celebrity_seeds"]))
    all_prompts = [p for p in prompts for _ in seeds]
    noise = seeded_noise([s for _ in prompts for s in seeds], [1] * len(all_prompts), shape)
    return all_prompts, draw(all_prompts, noise)


def i2p_rows(ccfg: dict):
    from pecker.text.prompts import read_i2p

    return read_i2p(ccfg["i2p_prompts"], category=ccfg["i2p_category"])


def nudity_images(ccfg: dict, draw: Draw, shape, max_prompts: int | None = None):
    """``images_per_prompt`` images from each I2P-style row's seed; returns (prompt ids, images)."""
    df = i2p_rows(ccfg)
    if max_prompts is not None:
        df = df.iloc[:max_prompts]
    k = ccfg["images_per_prompt"]
    prompts = [p for p in df["prompt"] for _ in range(k)]
    ids = np.repeat(np.arange(len(df)), k)
    noise = seeded_noise(df["sd_seed"].tolist(), [k] * len(df), shape)
    return ids, prompts, draw(prompts, noise)


def nudity_image_chunks(ccfg: dict, draw: Draw, shape, prompts_per_chunk: int = 50):
    """:func:`nudity_images` in chunks of ``prompts_per_chunk`` rows: yields (prompt ids, prompts,
    images), the same noise per row as the whole-file draw (each row's seed starts its own generator)."""
    df = i2p_rows(ccfg)
    k = ccfg["images_per_prompt"]
    for start in range(0, len(df), prompts_per_chunk):
        part = df.iloc[start:start + prompts_per_chunk]
        prompts = [p for p in part["prompt"] for _ in range(k)]
        ids = np.repeat(np.arange(start, start + len(part)), k)
        noise = seeded_noise(part["sd_seed"].tolist(), [k] * len(part), shape)
        yield ids, prompts, draw(prompts, noise)


def evaluate_concept_model(ds_cfg: dict, draw: Draw, shape, tasks: list[str], *, classifier_prefix, device,
                           final: bool, data_dir=None, results_dir=None, dataset: str = "<dataset>",
                           reference_cache=None, gcd_output=None) -> dict:
    """All concept metrics of one model on ``tasks`` (names in ``unlearn.tasks``); the figure grids
    are :func:`grid_images`."""
    from pecker.classifier.models import load_classifier
    from pecker.evaluate import concept as M

    ecfg = ds_cfg["evaluate"]
    ccfg = ecfg["concept"]
    if ccfg.get("detectors", "embedded") == "paper":
        return evaluate_with_paper_detectors(ds_cfg, draw, shape, tasks, device=device, final=final,
                                             gcd_output=gcd_output)
    all_tasks = ds_cfg["unlearn"]["tasks"]
    ch = ds_cfg["data"]["channels"]
    clf, cmeta = load_classifier(classifier_prefix, device)
    spec = cmeta["input_spec"]
    use_nude = ccfg["nudenet"] == "always" or (ccfg["nudenet"] == "final" and final)
    nude = M.NudeNetDetector(threshold=ccfg["nudenet_threshold"]) if use_nude else None
    metrics, details = {}, {}
    for name in tasks:
        task = all_tasks[name]
        if task["type"] == "celebrity":
            prompts, images = celebrity_images(task, ccfg, draw, shape)
            probs = class_probs(clf, spec, images, ch, device)
            thr = ccfg["object_threshold"]
            metrics[name] = {"share_without_object": M.share_without_object(probs, thr),
                             "gcd_analogue": M.gcd_analogue(probs, int(task["target"]), thr),
                             "target_top1_share": float((probs.argmax(1) == int(task["target"])).mean()),
                             "n_images": int(len(images))}
        else:
            ids, prompts, images = nudity_images(ccfg, draw, shape)
            attr = M.attribute_detector(images, threshold=ccfg["attribute_threshold"])
            nn_flags = nude.flags(images) if nude is not None else np.zeros(len(images), bool)
            flags = M.unsafe(attr, nn_flags)
            shares = M.per_prompt_share(flags, ids)
            metrics[name] = {"inappropriate_probability": M.inappropriate_probability(flags),
                             "max_expected_inappropriateness": M.max_expected_inappropriateness(
                                 shares, n_draws=ccfg["bootstrap_draws"], k=ccfg["bootstrap_prompts"], seed=ccfg["bootstrap_seed"]),
                             "attribute_rate": float(attr.mean()), "nudenet_rate": float(nn_flags.mean()),
                             "n_prompts": int(len(shares)), "n_images": int(len(images))}
        log.info("task %s: %s", name, metrics[name])
    out = {"metrics": metrics, "details": details,
           "classifier": {"checkpoint": str(classifier_prefix), "sha256": cmeta["sha256"],
                          "heldout_accuracy": cmeta.get("heldout_accuracy")},
           "detectors": {"object": f"classifier max probability >= {ccfg['object_threshold']} (substitute for MTCNN faces)",
                         "gcd": "classifier probability of the target class (substitute for the Giphy Celebrity Detector)",
                         "attribute": f"inverted-image detector, border mean >= {ccfg['attribute_threshold']} (substitute for Q16)",
                         "nudenet": nude.version() if nude is not None else f"not run (evaluate.concept.nudenet: {ccfg['nudenet']})"}}
    if final:
        out.update(_final_checks(ds_cfg, draw, shape, clf, spec, device, data_dir, results_dir, dataset, reference_cache))
    return out



# ----------------------------------------------------------------------------- the paper's detectors


def q16_from_config(ccfg: dict, device):
    """Q16 of ``evaluate.concept.q16``: its prompts file, verified against the sha256 of the asset
    manifest it belongs to (or the ``prompts_sha256`` key), and the local CLIP folder."""
    from pecker.assets import recorded_sha256
    from pecker.config import ConfigError
    from pecker.evaluate.q16 import Q16Classifier, read_prompts

    qcfg = ccfg.get("q16") or {}
    if not qcfg.get("clip") or not qcfg.get("prompts"):
        raise ConfigError("config key 'evaluate.concept.q16': detectors paper scores nudity with Q16; set q16.clip "
                          "(a CLIP ViT-L/14 folder) and q16.prompts (I2P's prompts.p)")
    sha = qcfg.get("prompts_sha256") or recorded_sha256(qcfg["prompts"])
    if not sha:
        raise ConfigError("config key 'evaluate.concept.q16.prompts_sha256': not set, and the prompts file is not part "
                          "of a fetched asset whose manifest records its sha256")
    return Q16Classifier(qcfg["clip"], read_prompts(qcfg["prompts"], sha), device=device,
                         batch_size=qcfg.get("batch_size", 32))


def evaluate_with_paper_detectors(ds_cfg: dict, draw: Draw, shape, tasks: list[str], *, device, final: bool,
                                  gcd_output=None) -> dict:
    """Tables 2-3 as the paper scores them: GCD for celebrity tasks (from ``gcd_output``, the JSON lines
    of scripts/gcd_detect.py over :func:`write_celebrity_images`), Q16 OR NudeNet for nudity."""
    from pecker.config import ConfigError
    from pecker.evaluate import concept as M
    from pecker.evaluate import gcd

    ccfg = ds_cfg["evaluate"]["concept"]
    all_tasks = ds_cfg["unlearn"]["tasks"]
    gcfg = ccfg.get("gcd") or {}
    metrics, detectors = {}, {}
    q16 = nude = None
    records = None
    for name in tasks:
        task = all_tasks[name]
        if task["type"] == "celebrity":
            if gcd_output is None:
                raise ConfigError(f"task {name!r}: detectors paper reads the celebrity detector's output (--gcd FILE, "
                                  "rule gcd_detect)")
            if records is None:
                records = gcd.read_gcd_output(gcd_output)
            mine = [r for r in records if r["image"].split("/", 1)[0] == name]
            expected = len(read_celebrity_prompts(task)) * ccfg["celebrity_seeds"]
            if len(mine) != expected:
                raise ValueError(f"{gcd_output}: {len(mine)} images of task {name!r}, expected {expected} "
                                 "(prompts x evaluate.concept.celebrity_seeds): rerun its gcd_detect job")
            metrics[name] = {**gcd.gcd_metrics(mine, str(task["target"]), gcfg.get("rule", "max")),
                             "n_images": len(mine)}
            detectors["gcd"] = {"implementation": "Giphy Celebrity Detector (scripts/gcd_detect.py)",
                                "output": str(gcd_output), "output_sha256": io.sha256_file(gcd_output),
                                "rule": gcfg.get("rule", "max")}
        else:
            if q16 is None:
                q16 = q16_from_config(ccfg, device)
                use_nude = ccfg["nudenet"] == "always" or (ccfg["nudenet"] == "final" and final)
                nude = M.NudeNetDetector(threshold=ccfg["nudenet_threshold"]) if use_nude else None
            # in chunks of prompts: 9,310 images of 512 px would need 7 GB at once
            q_parts, nn_parts, id_parts = [], [], []
            for ids, _, images in nudity_image_chunks(ccfg, draw, shape):
                q_parts.append(q16.flags(images))
                nn_parts.append(nude.flags(images) if nude is not None else np.zeros(len(images), bool))
                id_parts.append(ids)
            q_flags, nn_flags, ids = np.concatenate(q_parts), np.concatenate(nn_parts), np.concatenate(id_parts)
            flags = M.unsafe(q_flags, nn_flags)
            shares = M.per_prompt_share(flags, ids)
            metrics[name] = {"inappropriate_probability": M.inappropriate_probability(flags),
                             "max_expected_inappropriateness": M.max_expected_inappropriateness(
                                 shares, n_draws=ccfg["bootstrap_draws"], k=ccfg["bootstrap_prompts"],
                                 seed=ccfg["bootstrap_seed"]),
                             "q16_rate": float(q_flags.mean()), "nudenet_rate": float(nn_flags.mean()),
                             "n_prompts": int(len(shares)), "n_images": int(len(ids))}
            detectors["q16"] = q16.version()
            detectors["nudenet"] = nude.version() if nude is not None else f"not run (evaluate.concept.nudenet: {ccfg['nudenet']})"
        log.info("task %s: %s", name, metrics[name])
    return {"metrics": metrics, "details": {}, "detectors": detectors,
            "retain": None, "retain_note": "detectors paper: no FID of retained prompts (Tables 2-3 report none)"}


def model_tasks(ds_cfg: dict, dataset: str, kind: str, prefix) -> list[str]:
    """The tasks a model is scored on: every one for the teacher and SLD; for a model that unlearned (a
    generator, or an ESD UNet: kind diffusion), the task its sidecar records (refused, naming the file,
    when that task is not configured)."""
    from pecker.config import ConfigError

    tasks = ds_cfg["unlearn"]["tasks"]
    if kind not in ("generator", "diffusion"):
        return sorted(tasks)
    name = (io.read_sidecar(Path(str(prefix) + ".json")).get("forget") or {}).get("task")
    if name not in tasks:
        raise ConfigError(f"{prefix}.json: the model forgot task {name!r}, which is not in "
                          f"datasets.{dataset}.unlearn.tasks ({', '.join(sorted(tasks))})")
    return [name]


def celebrity_tasks_of(ds_cfg: dict, dataset: str, kind: str, prefix) -> list[str]:
    """The celebrity tasks of :func:`model_tasks`."""
    tasks = ds_cfg["unlearn"]["tasks"]
    return [n for n in model_tasks(ds_cfg, dataset, kind, prefix) if tasks[n]["type"] == "celebrity"]


def read_celebrity_prompts(task: dict) -> list[str]:
    from pecker.text.prompts import read_prompt_csv

    return read_prompt_csv(task["prompts"])


def write_celebrity_images(ds_cfg: dict, draw: Draw, shape, tasks: list[str], out_dir: str | Path,
                           write_index: bool = True) -> dict:
    """The celebrity images of ``tasks`` (prompts x seeds 0..celebrity_seeds-1, the same noise for every
    model) as ``OUT/<task>/<prompt index>_<seed>.png`` for the celebrity detector's job; returns the index
    it also writes to ``OUT/index.json``."""
    from PIL import Image

    ccfg = ds_cfg["evaluate"]["concept"]
    out_dir = Path(out_dir)
    index = {}
    for name in tasks:
        task = ds_cfg["unlearn"]["tasks"][name]
        if task["type"] != "celebrity":
            continue
        prompts, images = celebrity_images(task, ccfg, draw, shape)
        n_seeds = ccfg["celebrity_seeds"]
        (out_dir / name).mkdir(parents=True, exist_ok=True)
        files = []
        for i, (prompt, image) in enumerate(zip(prompts, images)):
            rel = f"{name}/{i // n_seeds:03d}_{i % n_seeds:02d}.png"
            with io.atomic_path(out_dir / rel) as tmp:
                Image.fromarray(image).save(tmp, format="PNG")
            files.append({"file": rel, "prompt": prompt, "seed": i % n_seeds})
        index[name] = files
    if write_index:
        io.atomic_write_json(out_dir / "index.json", index)
    return index

def fid_classes(ds_cfg: dict) -> list[int]:
    """Classes whose captions the FID of retained prompts uses: those no celebrity task targets."""
    targets = {int(t["target"]) for t in ((ds_cfg.get("unlearn") or {}).get("tasks") or {}).values()
               if t["type"] == "celebrity" and isinstance(t.get("target"), int)}
    return [c for c in range(ds_cfg["data"]["num_classes"]) if c not in targets]


def _final_checks(ds_cfg, draw, shape, clf, spec, device, data_dir, results_dir, dataset, reference_cache) -> dict:
    """FID of retained prompts, and the class accuracy / attribute rate of plain and keyword prompts."""
    from pecker.evaluate import concept as M
    from pecker.evaluate import fidelity
    from pecker.evaluate.features import build_extractor
    from pecker.evaluate.run import reference_cache_path, reference_images
    from pecker.text.prompts import load_caption_spec

    ecfg, ccfg = ds_cfg["evaluate"], ds_cfg["evaluate"]["concept"]
    spec_c = load_caption_spec(ds_cfg["text"]["captions"])
    keep = fid_classes(ds_cfg)
    n = ccfg["fid_per_class"]
    # one plain caption per sample, cycling through the class's templates and phrases
    from pecker.text.prompts import captions_for

    prompts, labels = [], []
    for c in keep:
        caps = captions_for(spec_c, c, False)
        prompts += [caps[i % len(caps)] for i in range(n)]
        labels += [c] * n
    labels = np.asarray(labels)
    noise = seeded_noise([ecfg["seed"] + c for c in keep], [n] * len(keep), shape)
    images = draw(prompts, noise)
    probs = class_probs(clf, spec, images, ds_cfg["data"]["channels"], device)
    acc = float((probs.argmax(1) == labels).mean())
    kw = list(spec_c.keywords)
    kprompts = [f"{kw[i % len(kw)]} {prompts[i]}" for i in range(0, len(prompts), max(1, len(prompts) // ccfg["attribute_check_n"]))]
    kimgs = draw(kprompts, seeded_noise([ecfg["seed"] + 99], [len(kprompts)], shape))
    attr = float(M.attribute_detector(kimgs, threshold=ccfg["attribute_threshold"]).mean())
    plain_attr = float(M.attribute_detector(images, threshold=ccfg["attribute_threshold"]).mean())

    extractor = build_extractor(ecfg["extractor"], device=device, inception_sha256=ecfg.get("inception_sha256"))
    ref_imgs, data_sha = reference_images(data_dir, keep, ecfg["reference_max_per_class"])
    ref_feats, ref_meta = fidelity.reference_features(
        ref_imgs, extractor, reference_cache or reference_cache_path(results_dir, dataset, ecfg["extractor"]),
        batch_size=ecfg["batch_size"])
    gen = _grey(images) if ds_cfg["data"]["channels"] == 1 else images
    gen_feats = extractor.features(gen, batch_size=ecfg["batch_size"])
    fm = fidelity.compute_metrics(gen_feats, ref_feats, ecfg["implementation"], kid_subsets=ecfg["kid_subsets"],
                                  kid_subset_size=ecfg["kid_subset_size"], pr_k=ecfg["pr_k"], seed=ecfg["seed"],
                                  extractor=extractor)
    return {"retain": {"fid": fm["fid"], "precision": fm["precision"], "recall": fm["recall"],
                       "class_accuracy": acc, "attribute_rate_plain": plain_attr,
                       "attribute_rate_keyword": attr, "n_keyword": len(kprompts), "n": int(len(images)),
                       "classes": keep},
            "reference": {"n_images": int(len(ref_imgs)), "data_sha256": data_sha,
                          "features_sha256": ref_meta.get("sha256")},
            "fid_source": fidelity.source_record(ecfg["implementation"], "fid")}


def evaluate_prefix(ds_cfg: dict, dataset: str, kind: str, prefix, *, classifier_prefix, data_dir, results_dir,
                    device, final: bool, grid_out=None, reference_cache=None, gcd_output=None) -> tuple[dict, dict]:
    """``pecker evaluate model`` on a text dataset: the saved model's concept metrics and its sidecar.

    The teacher and SLD are scored on every task; a generator on the task its sidecar records (refused,
    naming the file, when that task is not configured)."""
    tasks = ds_cfg["unlearn"]["tasks"]
    model_kind = "teacher" if kind in ("teacher", "diffusion") else kind
    names = model_tasks(ds_cfg, dataset, kind, prefix)
    results, meta = {}, None
    for name in names:
        concept = None
        if model_kind == "sld":  # SLD's safety concept: what this task forgets
            t = tasks[name]
            concept = t.get("concept") if t["type"] == "celebrity" else _negative_prompt(t)
        draw, meta, shape = model_drawer(model_kind, prefix, ds_cfg, device, safety_concept=concept)
        if "sld" in meta:  # the settings SLD ran with (warmup as scaled) and this task's safety concept
            results.setdefault("sld", {})[name] = meta["sld"]
        part = evaluate_concept_model(ds_cfg, draw, shape, [name], classifier_prefix=classifier_prefix, device=device,
                                      final=final and name == names[-1], data_dir=data_dir, results_dir=results_dir,
                                      dataset=dataset, reference_cache=reference_cache, gcd_output=gcd_output)
        for key, value in part.items():
            if key in ("metrics", "detectors") and key in results:
                results[key].update(value)
            else:
                results.setdefault(key, value)
        if grid_out is not None:
            results.setdefault("_grids", {})[name] = draw
    if grid_out is not None:
        grids = {}
        for name, draw in results.pop("_grids").items():
            grids[f"task_{name}"] = grid_images(ds_cfg, name, draw, shape)
        io.save_npz(grid_out, **grids)
    results["tasks"] = names
    results["substitutes"] = [
        "text-to-image stack: MiniLM text encoder, pass-through VAE and a UNet trained here on Fashion-MNIST "
        "captions, instead of Stable Diffusion v1.4",
        results["detectors"]["object"], results["detectors"]["gcd"], results["detectors"]["attribute"],
        "prompts: the embedded analogue sets of config/prompts instead of the paper's celebrity and I2P prompts",
    ] if ds_cfg["text"]["source"] == "minilm_wheel" else []
    ccfg = ds_cfg["evaluate"]["concept"]
    if ccfg.get("detectors") == "paper" and "nudenet" in results.get("detectors", {}) \
            and isinstance(results["detectors"]["nudenet"], dict):
        results["substitutes"].append("NudeNet 3.x detector (classes mapped to v2's) in place of NudeNet v2")
    results["substitutes"] += list(ccfg.get("substitutes") or [])
    return results, meta


def _negative_prompt(task: dict) -> str:
    from pecker.text.prompts import read_nudity_set

    return read_nudity_set(task["prompts"])["negative_prompt"]


def grid_images(ds_cfg: dict, name: str, draw: Draw, shape) -> np.ndarray:
    """The fixed (prompt, seed) pairs of a task's figure grid: the first ``grid_columns`` forget prompts
    at seed 0 (celebrity) or the first I2P-style rows at their seeds (nudity)."""
    ccfg = ds_cfg["evaluate"]["concept"]
    task = ds_cfg["unlearn"]["tasks"][name]
    n = ccfg["grid_columns"]
    if task["type"] == "celebrity":
        from pecker.text.prompts import read_prompt_csv

        prompts = read_prompt_csv(task["prompts"])[:n]
        return draw(prompts, seeded_noise([0] * len(prompts), [1] * len(prompts), shape))
    df = i2p_rows(ccfg).iloc[:n]
    return draw(df["prompt"].tolist(), seeded_noise(df["sd_seed"].tolist(), [1] * len(df), shape))
