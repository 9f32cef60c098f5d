"""Wall-clock of the workflow under two thread settings (issue "Speed", item 3): the demo's current
``DEMO_THREADS`` (every job on 1 thread, two at a time on 2 cores) against the earlier one (the teacher
on 2 threads), each a fresh run of the same config and targets in its own working directory.

    python benchmarks/schedule.py [--configfile config/config.yaml] [--cores 2] [--targets T ...]
                                  [--settings new old] [--keep DIR] [--json out.json]

A full comparison on the demo config takes about twice the demo (hours); on ``config/test.yaml`` it is a
few minutes but dominated by start-up costs. Nothing else may run on the machine meanwhile. Printed:
wall-clock per setting and, from Snakemake's benchmark files, the summed job time and the job count.
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def demo_threads() -> list[str]:
    """``DEMO_THREADS`` of the Makefile (the new setting)."""
    text = (ROOT / "Makefile").read_text()
    m = re.search(r"^DEMO_THREADS \?= (.+)$", text, flags=re.M)
    if not m:
        sys.exit("Makefile: no DEMO_THREADS line")
    return m.group(1).split()


def settings() -> dict[str, list[str]]:
    new = demo_threads()
    old = [("train_teacher=2" if x.startswith("train_teacher=") else x) for x in new]
    if not any(x.startswith("train_teacher=") for x in new):
        old.append("train_teacher=2")
    return {"new": new, "old": old}


def job_seconds(workdir: Path) -> dict[str, float]:
    out = {}
    for tsv in (workdir / "results" / "benchmarks").rglob("*.tsv"):
        rows = list(csv.DictReader(tsv.open(), delimiter="\t"))
        if rows:
            out[str(tsv.relative_to(workdir / "results" / "benchmarks"))] = float(rows[0]["s"])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configfile", default=str(ROOT / "config" / "test.yaml"))
    ap.add_argument("--cores", type=int, default=2)
    ap.add_argument("--targets", nargs="*", default=[])
    ap.add_argument("--settings", nargs="+", choices=["new", "old"], default=["new", "old"])
    ap.add_argument("--keep", type=Path, default=None, help="keep the working directories under this folder")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()

    options = settings()
    rows = []
    for name in args.settings:
        work = Path(tempfile.mkdtemp(prefix=f"pecker-schedule-{name}-", dir=args.keep))
        cmd = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "-d", str(work), *args.targets,
               "--configfile", args.configfile, "--cores", str(args.cores), "--set-threads", *options[name]]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if proc.returncode:
            sys.exit(f"{name}: snakemake failed:\n{proc.stderr[-3000:]}")
        jobs = job_seconds(work)
        rows.append({"setting": name, "wall_clock_s": round(wall, 1), "job_time_s": round(sum(jobs.values()), 1),
                     "n_jobs": len(jobs), "threads": options[name]})
        print(f"  done {name}: {wall:.0f} s", file=sys.stderr, flush=True)
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)
    print(f"{args.configfile}, --cores {args.cores}")
    print(f"{'setting':8} {'wall s':>8} {'job time s':>10} {'jobs':>5}")
    for r in rows:
        print(f"{r['setting']:8} {r['wall_clock_s']:8.0f} {r['job_time_s']:10.0f} {r['n_jobs']:5d}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
