"""Classifier-based figures of generated samples: per-class label accuracy and unlearning
accuracy UA = 100 * (1 - share of forget-class samples labelled as the forget class)."""

from __future__ import annotations

import numpy as np
import torch


def label_accuracy(pred: np.ndarray, labels: np.ndarray) -> dict:
    """Overall and per-class share of samples whose predicted label is their conditioning label."""
    per_class = {int(c): float((pred[labels == c] == c).mean()) for c in np.unique(labels)}
    return {"accuracy": float((pred == labels).mean()) if len(labels) else float("nan"),
            "per_class": per_class, "n": int(len(labels))}


def unlearning_accuracy(logits: torch.Tensor, labels: np.ndarray, forget_class: int, cover_class: int | None = None) -> dict:
    """UA over the samples generated for ``forget_class`` only (divided by their number, not by all).

    Also: mean probability of and predictive entropy on the forget-class samples, and the share
    classified as the cover class.
    """
    mask = labels == forget_class
    n = int(mask.sum())
    if n == 0:
        raise ValueError(f"no samples generated for the forget class {forget_class}")
    lf = logits[torch.from_numpy(mask)]
    prob = lf.softmax(1)
    pred = prob.argmax(1).numpy()
    out = {
        "ua": 100.0 * (1.0 - float((pred == forget_class).mean())),
        "n_forget_samples": n,
        "forget_class_prob_mean": float(prob[:, forget_class].mean()),
        "forget_entropy_mean": float(-(prob * prob.clamp_min(1e-12).log()).sum(1).mean()),
        "forget_pred_histogram": np.bincount(pred, minlength=logits.shape[1]).tolist(),
    }
    if cover_class is not None:
        out["cover_share"] = float((pred == cover_class).mean())
    return out
