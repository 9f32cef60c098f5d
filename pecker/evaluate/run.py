"""Evaluate one model (a one-step generator checkpoint or the multi-step teacher) by docs/method.md §6.

For a dataset with forget class ``c_f``:

- UA and forget-class statistics from ``n_forget`` samples of ``c_f`` (divided by their number);
- retained accuracy, FID, KID, precision, recall and IS from ``per_class`` samples of each retained
  class, against the retained-class training images (reference features cached per extractor);
- a small fixed-noise grid of samples for Fig. 2.

The same noise seed is used at every checkpoint, so curves over steps compare like with like. The
result JSON records every number's source (library, version and function, as
:func:`pecker.evaluate.fidelity.source_record` makes it), feature extractor and classifier, and which
of them substitute for the paper's assets.

A generator is scored only for the task it was trained for: :func:`check_generator_task` compares the
forget / cover classes its sidecar records with the config's before anything is sampled.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from pecker import io
from pecker.classifier.models import load_classifier, predict_logits
from pecker.data import load_prepared
from pecker.diffusion.sample import sample_batch, sample_many
from pecker.diffusion.schedule import make_scheduler
from pecker.diffusion.unet import load_unet
from pecker.evaluate import fidelity
from pecker.evaluate.accuracy import label_accuracy, unlearning_accuracy
from pecker.evaluate.features import EXTRACTORS, build_extractor

log = logging.getLogger("pecker.evaluate")

PAPER_DATASETS = ("cifar10", "stl10")
DrawFn = Callable[[torch.Tensor, torch.Tensor | torch.Generator], torch.Tensor]


def retained_classes(num_classes: int, forget_class: int) -> list[int]:
    return [c for c in range(num_classes) if c != forget_class]


def reference_images(data_dir: str | Path, classes: list[int], max_per_class: int | None) -> tuple[np.ndarray, str]:
    """Training images of ``classes`` (the first ``max_per_class`` of each), and the data file's sha256."""
    images, labels, _ = load_prepared(data_dir)
    keep = np.concatenate([np.flatnonzero(labels == c)[:max_per_class] for c in classes])
    return images[np.sort(keep)], io.sha256_file(Path(data_dir) / "train.npz")


class TaskMismatch(ValueError):
    """A generator checkpoint was trained for another forget / cover class than the config scores."""


def _class_label(record) -> int | None:
    """The label of a ``{"type": "class", "label": int}`` record (or of a bare int); else ``None``."""
    if isinstance(record, dict):
        if record.get("type", "class") != "class":
            return None
        record = record.get("label")
    if isinstance(record, bool) or not isinstance(record, int):
        return None
    return int(record)


def check_generator_task(sidecar: dict, ds_cfg: dict, checkpoint: str | Path = "the generator") -> tuple[int, int]:
    """Refuse to score a generator for another task than it was trained for.

    The sidecar records ``forget`` / ``cover`` as ``{"type": "class", "label": int}`` (falling back
    to the older ``forget_class`` / ``cover_class`` keys when ``forget`` / ``cover`` is absent); both
    must equal the config's ``unlearn.forget_class`` / ``cover_class``, which the evaluation uses for
    UA, the cover share and the retained classes.  Returns ``(forget, cover)``; raises
    :class:`TaskMismatch` naming ``checkpoint`` and both values otherwise, and when the sidecar does
    not record them (or records a non-class task).
    """
    fc, co = config_task(ds_cfg)
    got = {}
    for role, legacy in (("forget", "forget_class"), ("cover", "cover_class")):
        raw = sidecar[role] if role in sidecar else sidecar.get(legacy)
        if raw is None:
            what = "which class it forgot" if role == "forget" else "which class covers the forgotten one"
            raise TaskMismatch(f"{checkpoint} does not record {what} ('{role}' / '{legacy}'); the config scores "
                               f"forget class {fc} (cover {co}): refusing to evaluate a generator whose task "
                               "is unknown")
        label = _class_label(raw)
        if label is None:
            raise TaskMismatch(f"{checkpoint} records {role} {raw!r}, not a class label; the config scores "
                               f"forget class {fc} (cover {co}): this evaluation scores class forgetting only")
        got[role] = label
    if (got["forget"], got["cover"]) != (fc, co):
        raise TaskMismatch(
            f"{checkpoint} was trained to forget class {got['forget']} (cover {got['cover']}), the config scores "
            f"forget class {fc} (cover {co}): its UA, cover share and retained-class metrics would be computed "
            "for the wrong class; evaluate it with the config it was trained with "
            "(datasets.<dataset>.unlearn.forget_class / cover_class) or pass the right checkpoint")
    return got["forget"], got["cover"]


def config_task(ds_cfg: dict) -> tuple[int, int]:
    """``(forget_class, cover_class)`` the evaluation of ``ds_cfg`` scores."""
    unl = ds_cfg.get("unlearn") or {}
    return int(unl.get("forget_class", 0)), int(unl.get("cover_class", 1))


def resolve_is_source(ecfg: dict) -> str:
    """``"inception"`` or ``"classifier"``: ``is_source: auto`` means Inception logits exactly when the
    extractor has them (``inception-v3-compat``)."""
    is_source = ecfg["is_source"]
    if is_source == "auto":
        is_source = "inception" if ecfg["extractor"] == "inception-v3-compat" else "classifier"
    return is_source


def generated_features(extractor, images: np.ndarray, batch_size: int,
                       with_logits: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """``(features, logits or None)`` of generated images, in one pass through the network.

    With ``with_logits`` (IS from Inception's logits) the extractor's ``features_and_logits`` gives
    both from the same forward passes (:class:`~pecker.evaluate.features.TorchFidelityInception`);
    an extractor without logits (NVIDIA's detector) cannot serve that IS and is refused.
    """
    if not with_logits:
        return extractor.features(images, batch_size=batch_size), None
    check_has_logits(extractor, getattr(extractor, "name", extractor))
    return extractor.features_and_logits(images, batch_size=batch_size)


def check_has_logits(extractor_or_cls, name) -> None:
    """Refuse an extractor (instance or class) without Inception logits for ``is_source: inception``."""
    if not hasattr(extractor_or_cls, "features_and_logits"):
        raise ValueError(f"evaluate.is_source 'inception' needs Inception logits; the extractor {name!r} has none "
                         "(use is_source: classifier or extractor: inception-v3-compat)")


def metric_source(record: dict, **fields) -> dict:
    """One ``metric_sources`` entry: the library record (``library``, ``version``, ``function``
    [, ``note``]) followed by what else describes the number."""
    return {"library": record.get("library"), "version": record.get("version"), "function": record.get("function"),
            **({"note": record["note"]} if record.get("note") else {}), **fields}


def reference_cache_path(results_dir: str | Path, dataset: str, extractor: str) -> Path:
    return Path(results_dir) / dataset / "eval" / f"reference_{extractor}.npz"


def model_drawer(kind: str, prefix: str | Path, ds_cfg: dict, device: torch.device) -> tuple[DrawFn, dict]:
    """``(draw(labels, generator) -> images in [-1, 1], checkpoint sidecar)`` for a saved model."""
    if kind == "generator":
        from pecker.unlearn.generator import load_generator, sample_generator

        gen, meta = load_generator(prefix, device=device)
        return (lambda y, g: sample_generator(gen, y, g)), meta
    if kind in ("teacher", "diffusion"):  # a multi-step DDPM: the teacher, or a baseline's result
        unet, meta = load_unet(prefix, device=device)
        unet.eval()
        ddpm = make_scheduler(ds_cfg["diffusion"])
        s = ds_cfg["evaluate"]["teacher_sampler"]
        return (lambda y, g: sample_batch(unet, ddpm, y, g, s["sampler"], s["steps"], s["guidance_scale"])), meta
    raise ValueError(f"unknown model kind {kind!r} (generator | teacher | diffusion)")


def substitutes(dataset: str, ds_cfg: dict, classifier_meta: dict, is_source: str) -> list[str]:
    """Human-readable list of what in this evaluation differs from the paper's assets."""
    out = []
    if ds_cfg["data"]["source"] not in PAPER_DATASETS:
        out.append(f"dataset: {ds_cfg['data']['source']} ({dataset}) instead of CIFAR-10 / STL-10")
    if classifier_meta["substitute"]:
        out.append(f"UA classifier: {classifier_meta['arch']['name']} trained from scratch instead of "
                   "ImageNet-pretrained ResNet-34")
    if is_source == "ua-classifier-logits":
        out.append("IS from the UA classifier's logits instead of Inception's 1008-way logits")
    out.append("FID/KID/precision/recall: PyTorch port of the Inception network instead of OpenAI's TF evaluator")
    return out


def evaluate_model(
    ds_cfg: dict,
    dataset: str,
    draw: DrawFn,
    *,
    classifier_prefix: str | Path,
    data_dir: str | Path,
    results_dir: str | Path,
    device: torch.device,
    final: bool,
    grid_out: str | Path | None = None,
    reference_cache: str | Path | None = None,
) -> dict:
    """All metrics of one model; returns the ``metrics``/``metric_sources``/... parts of the result."""
    ecfg = ds_cfg["evaluate"]
    fc, co = config_task(ds_cfg)
    is_source = resolve_is_source(ecfg)
    if is_source == "inception" and ecfg["extractor"] in EXTRACTORS:
        check_has_logits(EXTRACTORS[ecfg["extractor"]], ecfg["extractor"])  # before sampling, not after
    k = ds_cfg["data"]["num_classes"]
    keep = retained_classes(k, fc)
    per_class = ecfg["per_class"] if final or ecfg["curve_per_class"] is None else ecfg["curve_per_class"]
    n_forget = ecfg["n_forget"] if final or ecfg["curve_n_forget"] is None else ecfg["curve_n_forget"]
    seed, bs = ecfg["seed"], ecfg["batch_size"]

    # Samples: the forget class with one seed, the retained classes with another (fixed across steps).
    forget_labels = torch.full((n_forget,), fc, dtype=torch.long)
    retained_labels = torch.tensor(keep, dtype=torch.long).repeat_interleave(per_class)
    forget_imgs = sample_many(draw, forget_labels, bs, seed, desc="forget-class samples")
    retained_imgs = sample_many(draw, retained_labels, bs, seed + 1, desc="retained-class samples")

    clf, cmeta = load_classifier(classifier_prefix, device)
    spec = cmeta["input_spec"]
    forget_logits = predict_logits(clf, spec, forget_imgs, device=device)
    retained_logits = predict_logits(clf, spec, retained_imgs, device=device)
    ua = unlearning_accuracy(forget_logits, forget_labels.numpy(), fc, co)
    racc = label_accuracy(retained_logits.argmax(1).numpy(), retained_labels.numpy())

    extractor = build_extractor(ecfg["extractor"], device=device, inception_sha256=ecfg.get("inception_sha256"))
    ref_imgs, data_sha = reference_images(data_dir, keep, ecfg["reference_max_per_class"])
    ref_feats, ref_meta = fidelity.reference_features(
        ref_imgs, extractor, reference_cache or reference_cache_path(results_dir, dataset, ecfg["extractor"]),
        batch_size=bs)
    gen_feats, gen_logits = generated_features(extractor, retained_imgs, bs, with_logits=is_source == "inception")
    kwargs = dict(kid_subsets=ecfg["kid_subsets"], kid_subset_size=ecfg["kid_subset_size"], pr_k=ecfg["pr_k"],
                  seed=seed, extractor=extractor)
    main = fidelity.compute_metrics(gen_feats, ref_feats, ecfg["implementation"], **kwargs)
    cross = None
    if ecfg["cross_check"]:
        other = "clean-fid" if ecfg["implementation"] == "torch-fidelity" else "torch-fidelity"
        cross = fidelity.compute_metrics(gen_feats, ref_feats, other, with_pr=False, **kwargs)

    if is_source == "inception":
        is_res = fidelity.inception_score(gen_logits, ecfg["is_splits"],
                                          is_source="inception-v3-compat-logits-unbiased")
    else:
        is_res = fidelity.inception_score(retained_logits.numpy(), min(ecfg["is_splits"], len(retained_imgs)),
                                          is_source="ua-classifier-logits")

    if grid_out is not None:
        _save_grid(grid_out, draw, fc, keep, ecfg, seed)

    clf_record = {"checkpoint": str(classifier_prefix), "sha256": cmeta["sha256"], "arch": cmeta["arch"],
                  "heldout_accuracy": cmeta["heldout_accuracy"], "substitute": cmeta["substitute"]}
    ext = extractor.describe()
    feat_source = {"extractor": ext.get("name", ecfg["extractor"]), "extractor_sha256": ext.get("sha256") or ext.get("checksum"),
                   "n_gen": main["n_gen"], "n_ref": main["n_ref"]}
    sources = {
        "ua": {"classifier": clf_record, "substitute": cmeta["substitute"], "n": ua["n_forget_samples"]},
        "retained_accuracy": {"classifier": clf_record, "substitute": cmeta["substitute"], "n": racc["n"]},
        "is_mean": metric_source(is_res["is_implementation"], source=is_res["is_source"],
                                 substitute=is_res["is_source"] == "ua-classifier-logits", n=is_res["n_samples"]),
    }
    for m in ("fid", "kid_mean", "kid_std", "precision", "recall"):
        sources[m] = metric_source(main["implementation"][m], **feat_source, substitute=False)
        if cross and m in cross["implementation"]:
            sources[m]["cross_check"] = metric_source(cross["implementation"][m], value=cross[m])
    sources["is_std"] = sources["is_mean"]
    metrics = {
        "ua": ua["ua"], "retained_accuracy": racc["accuracy"],
        "fid": main["fid"], "kid_mean": main["kid_mean"], "kid_std": main["kid_std"],
        "precision": main["precision"], "recall": main["recall"],
        "is_mean": is_res["is_mean"], "is_std": is_res["is_std"],
        "forget_class_prob_mean": ua["forget_class_prob_mean"], "forget_entropy_mean": ua["forget_entropy_mean"],
        "cover_share": ua["cover_share"],
    }
    return {
        "metrics": metrics,
        "metric_sources": sources,
        "details": {"ua": ua, "retained_per_class_accuracy": racc["per_class"], "fidelity": main,
                    "fidelity_cross_check": cross, "inception_score": is_res},
        "samples": {"per_class": per_class, "n_forget": n_forget, "seed": seed, "retained_classes": keep},
        "reference": {"n_images": int(len(ref_imgs)), "classes": keep, "data_sha256": data_sha,
                      "features_cache": ref_meta.get("file"), "features_sha256": ref_meta.get("sha256")},
        "substitutes": substitutes(dataset, ds_cfg, cmeta, is_res["is_source"]),
    }


def _save_grid(path, draw: DrawFn, fc: int, keep: list[int], ecfg: dict, seed: int) -> None:
    labels = torch.cat([torch.full((ecfg["grid_forget"],), fc, dtype=torch.long),
                        torch.tensor(keep, dtype=torch.long).repeat_interleave(ecfg["grid_per_class"])])
    images = sample_many(draw, labels, ecfg["batch_size"], seed + 2, desc="grid samples")
    io.save_npz(path, images=images, labels=labels.numpy())
