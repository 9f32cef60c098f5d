"""Turn a raw source into the prepared format: ``train.npz`` + ``meta.json`` (see pecker.data)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import jsonschema
import numpy as np
import PIL
from PIL import Image
from tqdm import tqdm

from pecker import io
from pecker.config import ConfigError, load_schema
from pecker.data.raw import RawData
from pecker.data.sources import get_source, load_source, source_root
from pecker.provenance import Recorder
from pecker.workflow import ds_stage_hash

log = logging.getLogger(__name__)

RESAMPLE = Image.Resampling.BICUBIC  # Pillow's resize filters antialias when downscaling
RESAMPLE_NAME = "bicubic"


def complete_data_config(data: Mapping, cfg_key: str = "data") -> dict:
    """Validate a ``data`` section against ``$defs/data`` and fill the schema's defaults."""
    defs = load_schema()["$defs"]
    schema = {"$defs": defs, "$ref": "#/$defs/data"}
    errors = sorted(jsonschema.Draft202012Validator(schema).iter_errors(dict(data)),
                    key=lambda e: list(e.absolute_path))
    if errors:
        err = errors[0]
        where = ".".join([cfg_key, *map(str, err.absolute_path)])
        raise ConfigError(f"config key '{where}': {err.message}")
    props = defs["data"]["properties"]
    return {**{k: v["default"] for k, v in props.items() if "default" in v}, **data}


def select_per_class(labels: np.ndarray, max_per_class: int | None) -> np.ndarray:
    """Indices of the first ``max_per_class`` images of each class, in source order."""
    if max_per_class is None:
        return np.arange(labels.shape[0])
    keep = [np.flatnonzero(labels == c)[:max_per_class] for c in np.unique(labels)]
    return np.sort(np.concatenate(keep))


def resize_images(images: np.ndarray, resolution: int) -> np.ndarray:
    """uint8 N x H x W x C -> N x r x r x C with Pillow (bicubic, antialiased); no-op at native size."""
    n, h, w, c = images.shape
    if (h, w) == (resolution, resolution):
        return images
    out = np.empty((n, resolution, resolution, c), dtype=np.uint8)
    squeeze = c == 1
    for i in tqdm(range(n), desc=f"resize {h}x{w}->{resolution}x{resolution}", unit="img",
                  mininterval=1.0):
        img = Image.fromarray(images[i, :, :, 0] if squeeze else images[i])
        arr = np.asarray(img.resize((resolution, resolution), resample=RESAMPLE))
        out[i] = arr[..., None] if squeeze else arr
    return out


def resize_record(native: list[int], resolution: int) -> dict:
    """How :func:`resize_images` treated images of size ``native``, for meta.json."""
    if native == [resolution, resolution]:
        return {"method": "none (native size)"}
    return {"method": RESAMPLE_NAME, "library": f"Pillow {PIL.__version__}", "antialias": True}


def check_channels(have: int, channels: int, cfg_key: str = "data") -> None:
    """Raise unless ``have`` source channels can become ``channels`` (1->1, 1->3, 3->3)."""
    if have == 3 and channels == 1:
        raise ConfigError(
            f"config key '{cfg_key}.channels': 1 but the source has 3 (colour) channels; "
            "colour images are not converted to grey, use channels: 3"
        )


def convert_channels(images: np.ndarray, channels: int, cfg_key: str = "data") -> np.ndarray:
    """Repeat grey to RGB when ``channels`` is 3; colour -> 1 channel is a config error."""
    check_channels(images.shape[-1], channels, cfg_key)
    return np.repeat(images, 3, axis=-1) if images.shape[-1] < channels else images


def prepare(data_cfg: Mapping, out_dir: str | Path, dataset: str | None = None) -> dict:
    """Load, subsample, resize and write ``out_dir/train.npz`` + ``out_dir/meta.json``; return meta.

    ``dataset`` (the key under ``datasets``) only makes error messages name the full config key.
    """
    cfg_key = f"datasets.{dataset}.data" if dataset else "data"
    data = complete_data_config(data_cfg, cfg_key)
    if data["source"] == "none":
        raise ConfigError(f"config key '{cfg_key}.source': none: a dataset without training images has nothing to "
                          "prepare (its workflow has no data job)")
    digest = ds_stage_hash({"data": data}, "data")
    rec = Recorder("data.prepare", digest, dataset=dataset)
    check_channels(get_source(data["source"]).channels, data["channels"], cfg_key)  # before loading

    root = source_root(data)
    raw: RawData = load_source(data, cfg_key)
    if len(raw.class_names) != data["num_classes"]:
        raise ConfigError(f"config key '{cfg_key}.num_classes': {data['num_classes']} but source "
                          f"{data['source']} has {len(raw.class_names)} classes")
    native = list(raw.images.shape[1:3])
    log.info("%s: %d images of %s x %d at %s", data["source"], len(raw.labels), native,
             raw.images.shape[-1], root)

    idx = select_per_class(raw.labels, data["max_per_class"])
    images = convert_channels(resize_images(raw.images[idx], data["resolution"]),
                              data["channels"], cfg_key)
    labels = raw.labels[idx].astype(np.int64)
    counts = np.bincount(labels, minlength=data["num_classes"])

    out_dir = Path(out_dir)
    (out_dir / "meta.json").unlink(missing_ok=True)  # never leave an old meta next to a new npz
    npz = io.save_npz(out_dir / "train.npz", images=images, labels=labels)
    meta = {
        "dataset": dataset,
        "source": data["source"],
        "root": str(root.resolve()),
        "resolution": data["resolution"],
        "channels": data["channels"],
        "num_classes": data["num_classes"],
        "class_names": list(raw.class_names),
        "n_images": int(labels.shape[0]),
        "class_counts": {name: int(n) for name, n in zip(raw.class_names, counts)},
        "native_size": native,
        "native_channels": int(raw.images.shape[-1]),
        "max_per_class": data["max_per_class"],
        "resize": resize_record(native, data["resolution"]),
        "raw_checksums": raw.checksums,
        "files": {"train.npz": "sha256:" + io.sha256_file(npz)},
        "data_config": data,
        "config_hash": digest,
        "provenance": rec.finish(),
    }
    io.atomic_write_json(out_dir / "meta.json", meta)
    log.info("wrote %s (%d images, %s)", npz, meta["n_images"], meta["class_counts"])
    return meta
