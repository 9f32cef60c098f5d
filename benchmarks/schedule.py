"""Wall-clock of the workflow under two thread settings (issue "Speed", item 3): the demo's current
``DEMO_THREADS`` (every job on 1 thread, two at a time on 2 cores) against the earlier one (the teacher
on 2 threads), each a fresh run of the same config and targets in its own clean clone of the
repository's HEAD (the committed code, run with the clone's own package on ``PYTHONPATH``; relative
paths in the config resolve inside the clone, as in a user's checkout).

    python benchmarks/schedule.py [--configfile config/config.yaml] [--cores 2] [--targets T ...]
                                  [--settings new old] [--keep DIR] [--json out.json]

``--configfile`` is a path inside the repository. Uncommitted changes are not measured (a warning
says so); the commit measured is printed and recorded.

A full comparison on the demo config takes about twice the demo (hours); on ``config/test.yaml`` it is a
few minutes but dominated by start-up costs. Nothing else may run on the machine meanwhile. Printed:
wall-clock per setting and, from Snakemake's benchmark files, the summed job time and the job count.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
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


def clean_clone(work: Path) -> str:
    """Clone the repository's HEAD into ``work`` (which must not exist); return the commit."""
    subprocess.run(["git", "clone", "-q", "--no-hardlinks", str(ROOT), str(work)], check=True)
    return subprocess.run(["git", "-C", str(work), "rev-parse", "HEAD"], check=True, capture_output=True,
                          text=True).stdout.strip()


def job_seconds(workdir: Path) -> dict[str, float]:
    out = {}
    for tsv in (workdir / "results" / "benchmarks").rglob("*.tsv"):
        rows = list(csv.DictReader(tsv.open(), delimiter="\t"))
        if rows:
            out[str(tsv.relative_to(workdir / "results" / "benchmarks"))] = float(rows[0]["s"])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configfile", default="config/test.yaml", help="a path inside the repository")
    ap.add_argument("--cores", type=int, default=2)
    ap.add_argument("--targets", nargs="*", default=[])
    ap.add_argument("--settings", nargs="+", choices=["new", "old"], default=["new", "old"])
    ap.add_argument("--keep", type=Path, default=None, help="keep the working directories under this folder")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()

    options = settings()
    configfile = Path(args.configfile).resolve()
    try:
        configfile = configfile.relative_to(ROOT)
    except ValueError:
        sys.exit(f"--configfile {args.configfile}: not inside {ROOT} (each setting runs in a clone of it)")
    if subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                      text=True).stdout.strip():
        print("warning: uncommitted changes are not measured (each setting runs a clone of HEAD)", file=sys.stderr)
    if args.keep is not None:
        args.keep.mkdir(parents=True, exist_ok=True)
    rows = []
    for name in args.settings:
        work = Path(tempfile.mkdtemp(prefix=f"pecker-schedule-{name}-", dir=args.keep)) / "pecker"
        commit = clean_clone(work)
        cmd = [sys.executable, "-m", "snakemake", *args.targets, "--configfile", str(configfile),
               "--cores", str(args.cores), "--set-threads", *options[name]]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(work), os.environ.get("PYTHONPATH")]))}
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if proc.returncode:
            sys.exit(f"{name}: snakemake failed in {work}:\n{proc.stderr[-3000:]}")
        jobs = job_seconds(work)
        rows.append({"setting": name, "commit": commit, "wall_clock_s": round(wall, 1),
                     "job_time_s": round(sum(jobs.values()), 1), "n_jobs": len(jobs), "threads": options[name]})
        print(f"  done {name}: {wall:.0f} s", file=sys.stderr, flush=True)
        if args.keep is None:
            shutil.rmtree(work.parent, ignore_errors=True)
    print(f"{configfile}, --cores {args.cores}, commit {rows[0]['commit'][:7]}")
    print(f"{'setting':8} {'wall s':>8} {'job time s':>10} {'jobs':>5}")
    for r in rows:
        print(f"{r['setting']:8} {r['wall_clock_s']:8.0f} {r['job_time_s']:10.0f} {r['n_jobs']:5d}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
