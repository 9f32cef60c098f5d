"""What the numerics options cost and change (issue "Speed", item 5): the embedded SFD run from the
demo's teacher, N iterations, under ``unlearn.precision`` float32 (the default), bfloat16 autocast,
channels-last and pure bfloat16 / float16 weights (the latter with adam_eps 1e-6), each then scored
like a checkpoint (UA and FID of the curve sample counts).

    python benchmarks/precision.py [--results results] [--data data] [--steps 100] [--threads 2]
                                   [--variants float32 bfloat16 channels_last] [--out /tmp/precision]
                                   [--json out.json]

It needs a finished ``make demo`` (the mnist teacher, classifier and reference features). Every
variant runs the same command line, `pecker unlearn` then `pecker evaluate model --checkpoint-only`,
in its own process, one after another, so run it on idle cores. Printed: seconds per iteration (the
run's own log.csv, after the first iteration), the speed-up over float32, the mean losses of the last
10 iterations, UA and FID, and their differences from float32.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = {
    "float32": "{autocast: float32}",
    "bfloat16": "{autocast: bfloat16}",
    "channels_last": "{autocast: float32, channels_last: true}",
    "bfloat16_channels_last": "{autocast: bfloat16, channels_last: true}",
    "bfloat16_weights": "{weights: bfloat16}",
    "float16_weights": "{weights: float16}",
}
# settings a variant needs besides its precision: the embedded adam_eps 1e-8 is 0 in float16 (the loop
# refuses it), so pure float16 runs with the official SD code's 1e-6
EXTRA = {"float16_weights": ["unlearn.adam_eps=1.0e-6"]}


def _run(cmd: list[str], what: str) -> None:
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"{what} failed:\n{proc.stderr[-3000:]}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--results", type=Path, default=ROOT / "results")
    ap.add_argument("--data", type=Path, default=ROOT / "data")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--method", default="sfd")
    ap.add_argument("--variants", nargs="+", choices=sorted(VARIANTS), default=["float32", "bfloat16", "channels_last"])
    ap.add_argument("--out", type=Path, default=Path("/tmp/pecker-precision"))
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()

    res, ds = args.results / "mnist", "mnist"
    for need in (res / "teacher" / "ema.json", res / "classifier" / "model.json", res / "eval" / "reference.npz"):
        if not need.is_file():
            sys.exit(f"{need} is missing: run `make demo` first (this benchmark starts from its teacher)")
    pecker = [sys.executable, "-m", "pecker.cli"]
    rows = []
    for name in args.variants:
        out = args.out / name
        sets = ["--set", f"datasets.{ds}.unlearn.steps={args.steps}",
                "--set", f"datasets.{ds}.unlearn.checkpoint_every={args.steps}",
                "--set", f"datasets.{ds}.unlearn.precision={VARIANTS[name]}"]
        for extra in EXTRA.get(name, []):
            sets += ["--set", f"datasets.{ds}.{extra}"]
        _run([*pecker, "unlearn", "--config", "config/config.yaml", "-d", ds, *sets, "--method", args.method,
              "--seed", "0", "--teacher", str(res / "teacher" / "ema"), "--out", str(out),
              "--threads", str(args.threads)], f"{name}: unlearn")
        _run([*pecker, "evaluate", "model", "--config", "config/config.yaml", "-d", ds, *sets, "--kind", "generator",
              "--checkpoint", str(out / "generator_ema"), "--classifier", str(res / "classifier" / "model"),
              "--data", str(args.data / ds), "--reference", str(res / "eval" / "reference.npz"), "--checkpoint-only",
              "--out", str(out / "eval.json"), "--threads", str(args.threads)], f"{name}: evaluate")
        log = list(csv.DictReader((out / "log.csv").open()))
        ev = json.loads((out / "eval.json").read_text())
        rows.append({"variant": name, "sec_per_iter": statistics.mean(float(r["step_time_s"]) for r in log[1:]),
                     "loss_psi": statistics.mean(float(r["loss_psi"]) for r in log[-10:]),
                     "loss_theta": statistics.mean(float(r["loss_theta"]) for r in log[-10:]),
                     "ua": ev["metrics"]["ua"], "fid": ev["metrics"]["fid"],
                     "n_forget": ev["metrics"].get("n_forget"), "steps": args.steps})
        print(f"  done {name}", file=sys.stderr, flush=True)
    base = next((r for r in rows if r["variant"] == "float32"), rows[0])
    print(f"embedded SFD ({args.method}), {args.steps} iterations from the demo's teacher, {args.threads} threads; "
          f"scored like a checkpoint")
    print(f"{'variant':24} {'s/iter':>7} {'speed-up':>8} {'loss_psi':>9} {'loss_theta':>10} {'UA':>6} {'dUA':>6} "
          f"{'FID':>7} {'dFID':>6}")
    for r in rows:
        print(f"{r['variant']:24} {r['sec_per_iter']:7.3f} {base['sec_per_iter'] / r['sec_per_iter']:8.2f} "
              f"{r['loss_psi']:9.3f} {r['loss_theta']:10.4f} {r['ua']:6.1f} {r['ua'] - base['ua']:6.1f} "
              f"{r['fid']:7.2f} {r['fid'] - base['fid']:6.2f}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
