"""The Giphy Celebrity Detector (GCD) figures of Table 2 (paper scale), read from GCD's own output.

GCD (github.com/Giphy/celeb-detection-oss) needs Python 3.6 with its own pinned packages, so it runs
in its own environment (``rules/envs/gcd.yaml``), driven by ``scripts/gcd_detect.py``. That script
writes one JSON line per image, ``{"image": name, "faces": results}``, where ``results`` is what GCD's
``FaceRecognizer.perform`` returns for the faces its detector found in the image, serialised as
it is: a list with one entry per face cluster, ``[[[label, probability], ... top 5], is_known]``. The
labels are GCD's folder names, such as ``Brad_Pitt``. This module, in the main environment, turns
that file into the paper's two numbers:

- **share without faces**: images in which GCD found no face, over all images;
- **GCD score**: over the images with at least one face, the mean probability of the target
  celebrity, with a face's probability 0 when the target is not in its top 5. An image with several
  faces counts its most target-like face ((choice): ``max``, or ``first`` for the first cluster).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

FACE_RULES = ("max", "first")


def normalise_label(name: str) -> str:
    """``Brad_Pitt`` and ``brad pitt`` name the same celebrity."""
    return " ".join(str(name).replace("_", " ").split()).casefold()


def read_gcd_output(path: str | Path) -> list[dict]:
    """The per-image records of a ``scripts/gcd_detect.py`` output file (JSON lines); every record is
    checked for GCD's layout, with the line number in the error."""
    path = Path(path)
    records = []
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            faces = rec["faces"]
            for top, is_known in faces:
                for label, prob in top:
                    if not isinstance(label, str) or not 0.0 <= float(prob) <= 1.0:
                        raise ValueError(f"bad (label, probability) ({label!r}, {prob!r})")
                float(is_known)
            records.append({"image": str(rec["image"]), "faces": faces})
        except (ValueError, KeyError, TypeError) as err:
            raise ValueError(f"{path}:{lineno}: not a GCD record ({err}); expected "
                             '{"image": ..., "faces": [[[[label, prob], ...], is_known], ...]}') from None
    return records


def target_probability(faces: list, target: str, rule: str = "max") -> float:
    """Probability of ``target`` over an image's face clusters (0 where it is not in a top 5)."""
    if rule not in FACE_RULES:
        raise ValueError(f"GCD face rule {rule!r} is not one of {', '.join(FACE_RULES)}")
    want = normalise_label(target)
    per_face = [max((float(p) for label, p in top if normalise_label(label) == want), default=0.0) for top, _ in faces]
    if not per_face:
        return math.nan
    return per_face[0] if rule == "first" else max(per_face)


def gcd_metrics(records: list[dict], target: str, rule: str = "max") -> dict:
    """The Table 2 figures of one model and celebrity: ``share_without_faces``, ``gcd`` (NaN when no
    image has a face), and the counts they come from."""
    if not records:
        raise ValueError("no GCD records: nothing was evaluated")
    with_face = [target_probability(r["faces"], target, rule) for r in records if r["faces"]]
    n = len(records)
    return {"n_images": n, "n_with_face": len(with_face), "share_without_faces": 1.0 - len(with_face) / n,
            "gcd": sum(with_face) / len(with_face) if with_face else math.nan, "target": target, "face_rule": rule}
