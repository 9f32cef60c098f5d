"""Seconds per iteration and peak memory of the SD form of SFD and PECKER over per-GPU batches, with
and without gradient checkpointing (docs/method.md section 3; README "Running on a SLURM cluster").

    python benchmarks/sd_step.py [--batches 2 4 8] [--iters 3] [--warmup 1] [--accumulate K]
                                 [--autocast bfloat16 | --weights float16]
                                 [--network sd|sd-small] [--variants sfd pecker] [--json out.json]

The network is a randomly initialised Stable Diffusion v1.x-layout UNet2DConditionModel (``sd``:
block_out_channels 320/640/1280/1280, 2 layers per block, cross-attention 768, latent 4x64x64,
859.5M parameters) on random (B, 77, 768) text states, through the project's one unlearning loop
with the SD settings of config/config.yaml's fashion dataset (guidance 4.5 in all four score calls,
prompt dropout 0.1, t_init 625, PECKER's mask over every generator parameter, refreshed each step).
On CUDA it runs ``sd``; on a CPU, where ``sd`` would take minutes per iteration, ``sd-small`` (the same
layout at 1/10 of the width on a 4x16x16 latent). Batch B means B retain + B forget images per
iteration. Each row runs in its own process (benchmarks/unlearn_step.py --one), so its peak memory is
its own; a row that runs out of memory is reported as such and the others still run.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from child import run_child

HERE = Path(__file__).resolve().parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batches", nargs="+", type=int, default=[2, 4, 8])
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2, help="CPU threads")
    ap.add_argument("--autocast", choices=["float32", "bfloat16"], default="float32")
    ap.add_argument("--weights", choices=["float32", "float16", "bfloat16"], default="float32",
                    help="unlearn.precision.weights: pure low-precision weights (the official SD code: float16)")
    ap.add_argument("--accumulate", type=int, default=1, help="micro-batches per iteration (unlearn.accumulate)")
    ap.add_argument("--network", choices=["sd", "sd-small"], default=None, help="default: sd on CUDA, else sd-small")
    ap.add_argument("--variants", nargs="+", choices=["sfd", "pecker"], default=["sfd", "pecker"])
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()

    import torch

    network = args.network or ("sd" if torch.cuda.is_available() else "sd-small")
    rows = []
    for batch in args.batches:
        for ckpt in (False, True):
            for var in args.variants:
                cmd = [sys.executable, str(HERE / "unlearn_step.py"), "--one", network, var, "--paper-batch", str(batch),
                       "--paper-iters", str(args.iters), "--warmup", str(args.warmup), "--threads", str(args.threads),
                       "--autocast", args.autocast, "--weights", args.weights, "--accumulate", str(args.accumulate),
                       *(["--checkpointing"] if ckpt else [])]
                row = run_child(cmd, f"{network} batch {batch} checkpointing {ckpt} {var}", allow_oom=True)
                rows.append(row or {"network": network, "variant": var, "batch": batch, "checkpointing": ckpt, "oom": True})
                r = rows[-1]
                state = "out of memory" if r.get("oom") else f"{r['sec_per_iter']:.3f} s/it"
                print(f"  done batch {batch} ckpt {ckpt} {var}: {state}", file=sys.stderr, flush=True)

    done = [r for r in rows if not r.get("oom")]
    r0 = done[0] if done else {"device": "?", "params": 0}
    mem_key = "peak_cuda_mb" if "peak_cuda_mb" in r0 else "peak_rss_mb"
    print(f"network {network} ({r0['params'] / 1e6:.1f}M parameters), device {r0['device']}"
          f"{' (' + r0['gpu'] + ')' if 'gpu' in r0 else ''}, autocast {args.autocast}, weights {args.weights}, micro-batches {args.accumulate}, "
          f"mean of {args.iters} iterations after {args.warmup} warm-up")
    print(f"{'batch':>5} {'ckpt':>5} {'variant':8} {'s/iter':>8} {'mask s':>7} {mem_key:>12}")
    for r in rows:
        if r.get("oom"):
            print(f"{r['batch']:>5} {str(r['checkpointing']):>5} {r['variant']:8} {'out of memory':>29}")
            continue
        mask = f"{r['sec_mask_refresh']:.3f}" if "sec_mask_refresh" in r else "-"
        print(f"{r['batch']:>5} {str(r['checkpointing']):>5} {r['variant']:8} {r['sec_per_iter']:8.3f} {mask:>7} "
              f"{r[mem_key]:12.0f}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
