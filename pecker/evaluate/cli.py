"""``pecker evaluate ...``: metrics of generated samples, one JSON per evaluation with provenance."""

from __future__ import annotations

import click

from pecker import clitools
from pecker import config as cfgmod


@click.group()
def evaluate() -> None:
    """Evaluate generated samples (accuracy / UA, FID, KID, precision, recall, IS)."""


def classifier_record(meta: dict, prefix: str) -> dict:
    """What every classifier-based number records about the classifier that produced it."""
    return {
        "checkpoint": str(prefix), "sha256": meta["sha256"], "arch": meta["arch"],
        "substitute": meta["substitute"], "heldout_accuracy": meta["heldout_accuracy"],
        "config_hash": meta["config_hash"],
    }


@evaluate.command()
@clitools.config_options
@click.option("--classifier", "classifier_prefix", required=True, type=click.Path(dir_okay=False),
              help="Classifier checkpoint prefix, e.g. results/mnist/classifier/model.")
@click.option("--samples", "samples_path", required=True, type=click.Path(exists=True, dir_okay=False),
              help="Samples .npz (images uint8 NHWC, labels).")
@click.option("--out", "out_path", required=True, type=click.Path(dir_okay=False), help="Output JSON.")
@clitools.threads_option
@clitools.log_option
def accuracy(config_files, overrides, dataset, classifier_prefix, samples_path, out_path, threads, log_file) -> None:
    """Share of samples the classifier labels as their conditioning class, overall and per class."""
    from pecker import io
    from pecker.classifier.models import load_classifier, predict_logits
    from pecker import workflow
    from pecker.evaluate.accuracy import label_accuracy
    from pecker.provenance import Recorder

    log = clitools.setup_logging(log_file)
    clitools.set_threads(threads)
    cfg = clitools.load_config(config_files, overrides)
    cfgmod.dataset_config(cfg, dataset)
    device = clitools.resolve_device(cfg["device"])
    model, cmeta = load_classifier(classifier_prefix, device)
    smeta = io.read_sidecar(samples_path.rsplit(".", 1)[0] + ".json")
    io.verify_checksum(samples_path, smeta.get("sha256", ""))
    arrays = io.load_npz(samples_path)
    rec = Recorder("evaluate.accuracy", workflow.stage_hash(cfg, dataset, "accuracy"))
    pred = predict_logits(model, cmeta["input_spec"], arrays["images"], device=device).argmax(1).numpy()
    result = label_accuracy(pred, arrays["labels"])
    io.atomic_write_json(out_path, {
        "metric": "sample_label_accuracy", **result,
        "samples": {"file": samples_path, "sha256": io.sha256_file(samples_path), "n": int(len(pred)),
                    "source_model": smeta.get("model"), "source_sha256": smeta.get("model_sha256"),
                    "sampling": smeta.get("sampling")},
        "classifier": classifier_record(cmeta, classifier_prefix),
        "provenance": rec.finish(),
    })
    log.info("label accuracy %.4f over %d samples", result["accuracy"], len(pred))


def check_generator_sidecar(prefix: str, ds_cfg: dict) -> None:
    """:func:`pecker.evaluate.run.check_generator_task` on the sidecar ``PREFIX.json``, as a one-line
    ``click.ClickException`` (exit status 1, no traceback) when it refuses."""
    from pathlib import Path

    from pecker import io
    from pecker.evaluate.run import TaskMismatch, check_generator_task

    path = Path(prefix)
    if path.suffix in (".json", ".safetensors"):
        path = path.with_suffix("")
    sidecar = path.with_suffix(".json")
    try:
        check_generator_task(io.read_sidecar(sidecar), ds_cfg, checkpoint=sidecar)
    except TaskMismatch as err:
        raise click.ClickException(str(err)) from None


@evaluate.command()
@clitools.config_options
@click.option("--kind", type=click.Choice(["generator", "teacher", "diffusion", "sld"]), required=True,
              help="generator: a one-step SFD/PECKER checkpoint; teacher: the multi-step teacher DDPM; diffusion: "
                   "a multi-step DDPM that unlearned (Retrain, SA, SalUn), sampled as the teacher is; sld: the "
                   "teacher through diffusers' safe pipeline (SLD-Medium; text datasets).")
@click.option("--checkpoint", "prefix", required=True, type=click.Path(dir_okay=False),
              help="Checkpoint prefix (PREFIX.safetensors + PREFIX.json).")
@click.option("--classifier", "classifier_prefix", default=None, type=click.Path(dir_okay=False),
              help="Classifier checkpoint prefix (all but a text dataset with evaluate.concept.detectors paper).")
@click.option("--gcd", "gcd_output", default=None, type=click.Path(dir_okay=False, exists=True),
              help="Text dataset, detectors paper: the celebrity detector's output for this model (rule gcd_detect).")
@clitools.data_option
@click.option("--method", default=None, help="Method label recorded in the result (default: from the checkpoint).")
@click.option("--seed", type=int, default=None, help="Run seed recorded in the result (default: from the checkpoint).")
@click.option("--final/--checkpoint-only", default=True, show_default=True,
              help="Final evaluation (table sample counts) or an intermediate checkpoint (curve sample counts).")
@click.option("--out", "out_path", required=True, type=click.Path(dir_okay=False), help="Result JSON.")
@click.option("--grid", "grid_path", type=click.Path(dir_okay=False), default=None,
              help="Also save fixed-noise samples for Fig. 2 (.npz).")
@click.option("--reference", "reference_path", type=click.Path(dir_okay=False), default=None,
              help="Reference feature cache (default: {results_dir}/{dataset}/eval/reference_{extractor}.npz).")
@clitools.threads_option
@clitools.log_option
def model(config_files, overrides, dataset, kind, prefix, classifier_prefix, gcd_output, data_dir, method, seed, final,
          out_path, grid_path, reference_path, threads, log_file) -> None:
    """UA, retained accuracy, FID, KID, precision, recall and IS of one model, with provenance.

    A generator is refused (before anything is sampled) unless its sidecar records the forget and
    cover classes the config scores. On a text dataset (a ``text`` section): the concept metrics of
    Tables 2-3 instead (pecker.evaluate.concept_run), on every task for the teacher and SLD, on its
    own task for a generator.
    """
    from pecker import io
    from pecker import workflow
    from pecker.evaluate.run import evaluate_model, model_drawer
    from pecker.provenance import Recorder

    log = clitools.setup_logging(log_file)
    clitools.set_threads(threads)
    cfg = clitools.load_config(config_files, overrides)
    ds = cfgmod.dataset_config(cfg, dataset)
    device = clitools.resolve_device(cfg["device"])
    data_dir = clitools.data_dir_for(cfg, dataset, data_dir)
    rec = Recorder("evaluate.model", workflow.stage_hash(cfg, dataset, "evaluate"),
                   seeds={"evaluate": ds["evaluate"]["seed"]})
    paper = ((ds["evaluate"].get("concept") or {}).get("detectors") or "embedded") == "paper"
    if classifier_prefix is None and not (ds.get("text") and paper):
        raise click.UsageError("--classifier is required (only a text dataset with evaluate.concept.detectors paper "
                               "needs none)")
    if ds.get("text"):
        from pecker.evaluate.concept_run import evaluate_prefix

        res, cmeta = evaluate_prefix(ds, dataset, kind, prefix, classifier_prefix=classifier_prefix, data_dir=data_dir,
                                     results_dir=cfg["results_dir"], device=device, final=final, grid_out=grid_path,
                                     reference_cache=reference_path, gcd_output=gcd_output)
    else:
        if kind == "sld":
            raise cfgmod.ConfigError(f"--kind sld needs a text dataset (datasets.{dataset}.text)")
        if kind in ("generator", "diffusion"):
            check_generator_sidecar(prefix, ds)
        draw, cmeta = model_drawer(kind, prefix, ds, device)
        res = evaluate_model(ds, dataset, draw, classifier_prefix=classifier_prefix, data_dir=data_dir,
                             results_dir=cfg["results_dir"], device=device, final=final, grid_out=grid_path,
                             reference_cache=reference_path)
    prov = cmeta.get("provenance") or {}
    training = {
        "steps": cmeta.get("steps", cmeta.get("step")), "images_seen": cmeta.get("images_seen"),
        "wall_clock_s": cmeta.get("wall_clock_s", prov.get("wall_clock_s")),
        "peak_memory_mb": (cmeta.get("peak_memory") or prov.get("memory") or {}).get("cpu_peak_rss_mb"),
    }
    out = {
        "dataset": dataset,
        "method": method or cmeta.get("method") or kind,
        "seed": seed if seed is not None else cmeta.get("seed", 0),
        "step": cmeta.get("step"),
        "final": final,
        "kind": kind,
        "images_seen": cmeta.get("images_seen"),
        # recorded by the run (SFD: false with mask.source real; Retrain, SalUn: false); older generators: true
        "data_free": cmeta.get("data_free", kind == "generator"),
        **res,
        "checkpoint": {"path": str(prefix), "sha256": cmeta["sha256"], "config_hash": cmeta.get("config_hash")},
        "training": training,
        "provenance": rec.finish(),
    }
    io.atomic_write_json(out_path, out)
    m = res["metrics"]
    if ds.get("text"):
        log.info("concept metrics %s", m)
        return
    log.info("UA %.2f retained acc %.3f FID %.2f IS %.2f precision %.3f", m["ua"], m["retained_accuracy"],
             m["fid"], m["is_mean"], m["precision"])


@evaluate.command("celebrity-images")
@clitools.config_options
@click.option("--kind", type=click.Choice(["generator", "teacher", "sld", "diffusion"]), required=True,
              help="as in `pecker evaluate model` (diffusion: a multi-step UNet that unlearned, e.g. ESD)")
@click.option("--checkpoint", "prefix", required=True, type=click.Path(dir_okay=False),
              help="Checkpoint prefix (PREFIX.safetensors + PREFIX.json).")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Folder: TASK/NNN_SS.png per image and index.json.")
@clitools.threads_option
@clitools.log_option
def celebrity_images(config_files, overrides, dataset, kind, prefix, out_dir, threads, log_file) -> None:
    """Draw the celebrity-task images of one model for the celebrity detector's job (rule gcd_detect):
    the teacher and SLD on every celebrity task, a generator on its own."""
    from pecker import io
    from pecker.evaluate.concept_run import celebrity_tasks_of, model_drawer, write_celebrity_images

    log = clitools.setup_logging(log_file)
    clitools.set_threads(threads)
    cfg = clitools.load_config(config_files, overrides)
    ds = cfgmod.dataset_config(cfg, dataset)
    device = clitools.resolve_device(cfg["device"])
    index = {}
    for name in celebrity_tasks_of(ds, dataset, kind, prefix):
        task = ds["unlearn"]["tasks"][name]
        draw, _, shape = model_drawer("teacher" if kind == "diffusion" else kind, prefix, ds, device,
                                      safety_concept=task.get("concept") if kind == "sld" else None)
        index.update(write_celebrity_images(ds, draw, shape, [name], out_dir, write_index=False))
        log.info("task %s: %d images", name, len(index[name]))
    io.atomic_write_json(f"{out_dir}/index.json", index)  # last: its presence means the folder is complete


@evaluate.command()
@clitools.config_options
@clitools.data_option
@click.option("--out", "out_path", required=True, type=click.Path(dir_okay=False),
              help="Feature cache .npz (a .json sidecar is written beside it).")
@clitools.threads_option
@clitools.log_option
def reference(config_files, overrides, dataset, data_dir, out_path, threads, log_file) -> None:
    """Compute (or verify the cache of) the Inception features of the retained-class training images."""
    from pecker.evaluate import fidelity
    from pecker.evaluate.features import build_extractor
    from pecker import workflow
    from pecker.evaluate.run import reference_images, retained_classes
    from pecker.provenance import Recorder

    log = clitools.setup_logging(log_file)
    clitools.set_threads(threads)
    cfg = clitools.load_config(config_files, overrides)
    ds = cfgmod.dataset_config(cfg, dataset)
    ecfg = ds["evaluate"]
    if ds.get("text"):
        from pecker.evaluate.concept_run import fid_classes

        keep = fid_classes(ds)
    else:
        keep = retained_classes(ds["data"]["num_classes"], (ds.get("unlearn") or {}).get("forget_class", 0))
    images, _ = reference_images(clitools.data_dir_for(cfg, dataset, data_dir), keep, ecfg["reference_max_per_class"])
    extractor = build_extractor(ecfg["extractor"], device=clitools.resolve_device(cfg["device"]),
                                inception_sha256=ecfg.get("inception_sha256"))
    chash = workflow.stage_hash(cfg, dataset, "reference")
    rec = Recorder("evaluate.reference", chash)
    feats, meta = fidelity.reference_features(images, extractor, out_path, batch_size=ecfg["batch_size"],
                                              record={"config_hash": chash, "provenance": rec.finish()})
    log.info("reference features %s of %d images (cache %s)", feats.shape, len(images),
             "hit" if meta["cache_hit"] else "written")
