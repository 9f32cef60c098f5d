"""The paper's published numbers (``pecker/report/paper_results.yaml``, shipped with the package) and how our
rows map onto them."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import yaml

# Package data (pyproject ``[tool.setuptools.package-data]``): found the same way from a clone, an
# editable install and a ``pip install .`` copy.
PAPER_RESULTS = Path(__file__).resolve().parent / "paper_results.yaml"


def load_paper(path: str | Path | None = None) -> dict:
    """The parsed YAML; raises ``ValueError`` naming the file when its layout is not the expected one."""
    path = Path(path or PAPER_RESULTS)
    with path.open() as fh:
        data = yaml.safe_load(fh)
    for key in ("tables", "dataset_names", "cross_dataset_reference"):
        if not isinstance(data, dict) or key not in data:
            raise ValueError(f"{path}: key {key!r} missing (expected the layout of pecker/report/paper_results.yaml)")
    if "rows" not in data["tables"].get("table1", {}):
        raise ValueError(f"{path}: key 'tables.table1.rows' missing")
    return data


def norm_name(name: str) -> str:
    """``'SFD-Two-Stage'``, ``'sfd_two_stage'`` -> ``'sfdtwostage'``: how method names are matched."""
    return re.sub(r"[^a-z0-9]", "", str(name).lower())


@dataclass(frozen=True)
class PaperMatch:
    """Which paper row one of our (dataset, method) rows is compared with."""

    paper_dataset: str | None
    paper_method: str | None
    row: dict | None
    cross_dataset: bool

    @property
    def label(self) -> str:
        if self.row is None:
            return "no paper counterpart"
        where = f"{self.paper_dataset} / {self.paper_method}"
        return f"cross-dataset comparison with the paper's {where}" if self.cross_dataset else f"paper {where}"


class Paper:
    """Lookup of Table 1 cells and anomaly notes."""

    def __init__(self, data: dict | None = None, path: str | Path | None = None):
        self.data = data if data is not None else load_paper(path)
        self.path = str(path or PAPER_RESULTS)
        t1 = self.data["tables"]["table1"]
        self.table1_rows = t1["rows"]
        self.table1_metrics = t1.get("metrics", {})
        self.dataset_names = self.data["dataset_names"]
        self.claims = self.data.get("claims") or []
        self.reference = self.data["cross_dataset_reference"]

    def paper_dataset(self, dataset: str) -> tuple[str, bool]:
        """``(paper dataset name, cross_dataset)`` for one of our dataset keys."""
        if dataset in self.dataset_names:
            return self.dataset_names[dataset], False
        return self.reference, True

    def match(self, dataset: str, method: str) -> PaperMatch:
        pds, cross = self.paper_dataset(dataset)
        for row in self.table1_rows:
            if row["dataset"] == pds and norm_name(row["method"]) == norm_name(method):
                return PaperMatch(pds, row["method"], row, cross)
        return PaperMatch(pds, None, None, cross)

    def value(self, dataset: str, method: str, metric: str):
        m = self.match(dataset, method)
        return None if m.row is None else m.row.get(metric)

    def anomalies(self, table: str = "table1") -> list[dict]:
        return list(self.data["tables"].get(table, {}).get("anomalies") or [])

    def anomaly_notes(self, paper_dataset: str | None, paper_method: str | None, metric: str) -> list[str]:
        """Anomaly notes of Table 1 that name this paper cell."""
        out = []
        for a in self.anomalies("table1"):
            for c in a.get("cells", []):
                if c.get("dataset") == paper_dataset and c.get("method") == paper_method and c.get("metric") == metric:
                    out.append(f"{a['id']}: {' '.join(str(a['note']).split())}")
                    break
        return out
