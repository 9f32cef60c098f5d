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
    from pecker.config import config_hash
    from pecker.evaluate.accuracy import label_accuracy
    from pecker.provenance import Recorder

    log = clitools.setup_logging(log_file)
    clitools.set_threads(threads)
    cfg = clitools.load_config(config_files, overrides)
    cfgmod.dataset_config(cfg, dataset)
    device = clitools.resolve_device(cfg["device"])
    model, cmeta = load_classifier(classifier_prefix, device)
    arrays = io.load_npz(samples_path)
    smeta = io.read_json(samples_path.rsplit(".", 1)[0] + ".json")
    rec = Recorder("evaluate.accuracy", config_hash(cfgmod.stage_config(cfg, dataset, "classifier")))
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
