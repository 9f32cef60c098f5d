"""Train the UA classifier on a prepared dataset and report its held-out accuracy.

Recipe (docs/method.md section 6, paper scale): Adam, head learning rate x ``head_lr_mult``, weight
decay, ``epochs`` over a stratified training split; ``val_fraction`` of every class is held out.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from pecker import io
from pecker.classifier.models import (
    build_classifier, head_parameters, input_spec, predict_logits, preprocess, save_classifier,
)
from pecker.data import load_prepared
from pecker.provenance import Recorder
from pecker.workflow import ds_stage_hash

log = logging.getLogger("pecker.classifier")


def stratified_split(labels: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    train, val = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_val = max(1, int(round(val_fraction * len(idx))))
        val.append(idx[:n_val])
        train.append(idx[n_val:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(val))


def augment_batch(x: torch.Tensor, mode: str, gen: torch.Generator) -> torch.Tensor:
    """Random shifts (reflect-pad by 1/8 of the size, random crop) and optional horizontal flips."""
    if mode == "none":
        return x
    n, _, h, w = x.shape
    pad = max(1, h // 8)
    xp = F.pad(x, (pad, pad, pad, pad), mode="reflect")
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
    rows = (dy[:, None] + torch.arange(h))[:, None, :, None]  # (n, 1, h, 1): one crop per image, gathered at once
    cols = (dx[:, None] + torch.arange(w))[:, None, None, :]
    out = xp[torch.arange(n)[:, None, None, None], torch.arange(x.shape[1])[None, :, None, None], rows, cols]
    if mode == "shift_flip":
        flip = torch.rand(n, generator=gen) < 0.5
        out[flip] = out[flip].flip(-1)
    return out


def per_class_accuracy(pred: np.ndarray, labels: np.ndarray, num_classes: int) -> dict:
    return {int(c): float((pred[labels == c] == c).mean()) for c in range(num_classes) if (labels == c).any()}


def train_classifier(ds_cfg: dict, data_dir: str | Path, out_prefix: str | Path, device: torch.device) -> dict:
    ccfg, dcfg = ds_cfg["classifier"], ds_cfg["data"]
    chash = ds_stage_hash(ds_cfg, "classifier")
    rec = Recorder("classifier.train", chash, seeds={"classifier": ccfg["seed"]})
    torch.manual_seed(ccfg["seed"])
    images, labels, data_meta = load_prepared(data_dir)
    k = dcfg["num_classes"]
    tr, va = stratified_split(labels, ccfg["val_fraction"], ccfg["seed"])
    spec = input_spec(ccfg["arch"], dcfg["channels"], ccfg["input_size"])
    model = build_classifier(ccfg["arch"], spec["channels_in"], k, ccfg["width"], ccfg["pretrained"],
                             ccfg.get("pretrained_sha256")).to(device)
    init_sha256 = getattr(model, "pretrained_sha256", None)
    head = head_parameters(model)
    head_ids = {id(p) for p in head}
    body = [p for p in model.parameters() if id(p) not in head_ids]
    opt = torch.optim.Adam(
        [{"params": body, "lr": ccfg["lr"]}, {"params": head, "lr": ccfg["lr"] * ccfg["head_lr_mult"]}],
        weight_decay=ccfg["weight_decay"],
    )
    gen = torch.Generator().manual_seed(ccfg["seed"])
    images_t, labels_t = torch.from_numpy(images), torch.from_numpy(labels)
    history = []
    for epoch in range(ccfg["epochs"]):
        model.train()
        order = torch.from_numpy(tr)[torch.randperm(len(tr), generator=gen)]
        total, n = 0.0, 0
        for i in tqdm(range(0, len(order), ccfg["batch_size"]), desc=f"classifier epoch {epoch + 1}",
                      unit="batch", mininterval=5):
            idx = order[i:i + ccfg["batch_size"]]
            x = preprocess(images_t[idx], spec, device)
            x = augment_batch(x, ccfg["augment"], gen)
            loss = F.cross_entropy(model(x), labels_t[idx].to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total, n = total + loss.item() * len(idx), n + len(idx)
        val_pred = predict_logits(model, spec, images[va], device=device).argmax(1).numpy()
        acc = float((val_pred == labels[va]).mean())
        history.append({"epoch": epoch + 1, "train_loss": total / max(n, 1), "val_accuracy": acc})
        log.info("epoch %d train loss %.4f held-out accuracy %.4f", epoch + 1, total / max(n, 1), acc)

    # val_pred: the last epoch's held-out predictions are the final model's (the schema asks epochs >= 1)
    meta = {
        "arch": {"name": ccfg["arch"], "in_channels": spec["channels_in"], "num_classes": k, "width": ccfg["width"],
                 "pretrained": ccfg["pretrained"], "pretrained_sha256": init_sha256},
        "substitute": ccfg["arch"] != "resnet34" or not ccfg["pretrained"],
        "input_spec": spec,
        "config_hash": chash,
        "class_names": data_meta.get("class_names"),
        "data_sha256": io.sha256_file(Path(data_dir) / "train.npz"),
        "n_train": int(len(tr)), "n_heldout": int(len(va)),
        "heldout_accuracy": float((val_pred == labels[va]).mean()),
        "heldout_per_class_accuracy": per_class_accuracy(val_pred, labels[va], k),
        "history": history,
        "provenance": rec.finish(),
    }
    model.eval()
    save_classifier(out_prefix, model, meta)
    return meta
