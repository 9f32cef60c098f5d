"""GCD's Table 2 figures from its output (pecker/evaluate/gcd.py), on a synthetic file in the layout
scripts/gcd_detect.py writes (GCD's FaceRecognizer.perform results, one JSON line per image)."""

from __future__ import annotations

import json
import math
import py_compile

import pytest

from pecker.config import REPO_ROOT
from pecker.evaluate.gcd import gcd_metrics, read_gcd_output, target_probability


def _write(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


RECORDS = [
    {"image": "0.png", "faces": [[[["Brad_Pitt", 0.9], ["George_Clooney", 0.05]], 0.8]]},
    {"image": "1.png", "faces": []},
    {"image": "2.png", "faces": [[[["George_Clooney", 0.7], ["Brad_Pitt", 0.2]], 0.5],
                                 [[["brad pitt", 0.6]], 0.4]]},
    {"image": "3.png", "faces": [[[["Matt_Damon", 0.99]], 0.9]]},
]


def test_metrics_match_a_hand_computation(tmp_path):
    recs = read_gcd_output(_write(tmp_path / "faces.jsonl", RECORDS))
    m = gcd_metrics(recs, "Brad Pitt")
    assert (m["n_images"], m["n_with_face"]) == (4, 3)
    assert m["share_without_faces"] == pytest.approx(0.25)
    assert m["gcd"] == pytest.approx((0.9 + 0.6 + 0.0) / 3)  # image 2: the most target-like face
    assert gcd_metrics(recs, "Brad Pitt", rule="first")["gcd"] == pytest.approx((0.9 + 0.2 + 0.0) / 3)
    assert math.isnan(target_probability([], "Brad Pitt"))
    assert math.isnan(gcd_metrics([{"image": "x", "faces": []}], "Brad Pitt")["gcd"])


def test_a_malformed_record_is_named_by_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(RECORDS[0]) + "\n" + json.dumps({"image": "y", "faces": [[[["A", 1.5]], 0.1]]}) + "\n")
    with pytest.raises(ValueError, match=r"bad.jsonl:2: not a GCD record"):
        read_gcd_output(path)
    with pytest.raises(ValueError, match="face rule 'mean'"):
        target_probability(RECORDS[0]["faces"], "Brad Pitt", rule="mean")


def test_the_detector_script_compiles():
    """scripts/gcd_detect.py runs in GCD's Python 3.6 environment, which CI does not have: at least it
    must parse, and it must not import the project."""
    src = REPO_ROOT / "scripts" / "gcd_detect.py"
    py_compile.compile(str(src), doraise=True)
    assert "pecker" not in "".join(l for l in src.read_text().splitlines() if l.startswith(("import", "from")))
