"""Seconds per iteration and peak memory of SFD and PECKER (docs/method.md sections 3-4).

    python benchmarks/unlearn_step.py [--iters 3] [--paper-iters 2] [--paper-batch 4] [--skip-paper]
                                      [--networks embedded cifar10 cifar10-ddpm sd sd-small]
                                      [--variants sfd pecker ...] [--autocast bfloat16] [--channels-last]
                                      [--weights float16] [--checkpointing] [--accumulate K]

Networks: the embedded one (config/config.yaml, batch from its unlearn block), the CIFAR-10 paper
network (config/cifar10.yaml: diffusers UNet2DModel) and the published teachers' network on CIFAR-10
(cifar10-ddpm: config/published_cifar10.yaml, unet.arch ddpm_conditional, 38.63M parameters), the
paper networks at a small batch, all randomly initialised (no teacher file needed). Text networks
(the SD form of the loop: guidance 4.5 in every score call, prompt dropout, t_init 625; the settings
of config/config.yaml's fashion dataset): ``sd``, a Stable Diffusion v1.x-layout UNet2DConditionModel
(block_out_channels 320/640/1280/1280, 2 layers per block, cross-attention 768, latent 4x64x64,
859.5M parameters) on random (B, 77, 768) text states, and ``sd-small``, the same layout at 1/10 of
the width on a 4x16x16 latent, for CPUs (benchmarks/sd_step.py runs them over batches).
``--autocast``, ``--channels-last``, ``--weights`` (pure low-precision weights, the official SD
code's float16), ``--checkpointing`` and ``--accumulate`` set the loop's precision, gradient checkpointing and micro-batches (README "Configuration").
Variants: sfd; pecker with the mask recomputed every step (the paper's Algorithm 1), once at step 0,
and every K steps (K = the number of timed iterations, so exactly one refresh falls in the timed
window and the mean is the amortised cost). Each (network, variant) runs in its own process so the
peak memory is its own. Uses CUDA when available, else the CPU.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import time
from pathlib import Path

from child import ROOT, run_child  # benchmarks/child.py (this script's folder is on sys.path)

# name -> (config files, dataset, overrides); the published overlay needs a sha256 to validate, and
# no file is read here (the networks are random)
NETWORKS = {
    "embedded": (["config/config.yaml"], "mnist", []),
    "cifar10": (["config/cifar10.yaml"], "cifar10", []),
    "cifar10-ddpm": (["config/cifar10.yaml", "config/published_cifar10.yaml"], "cifar10",
                     ["datasets.cifar10.teacher.file.sha256=" + "f" * 64]),
}
# Text networks: the fashion dataset's SD-form settings, its UNet config replaced by this layout and
# its latent by (channels, resolution); text states random, 77 tokens of width cross_attention_dim.
SD_LAYOUT = {"arch": "unet2d_condition", "base_channels": 320, "channel_mult": [1, 2, 4, 4], "layers_per_block": 2,
             "attention_resolutions": [64, 32, 16], "dropout": 0.0, "attention_head_dim": 8, "norm_num_groups": 32,
             "cross_attention_dim": 768}
TEXT_NETWORKS = {
    "sd": (SD_LAYOUT, {"resolution": 64, "channels": 4}),
    "sd-small": ({**SD_LAYOUT, "base_channels": 32, "attention_resolutions": [16, 8, 4]}, {"resolution": 16, "channels": 4}),
}
TEXT_TOKENS = 77
VARIANTS = ("sfd", "pecker", "pecker_once", "pecker_every_k")


def text_task(s: dict, width: int, device):
    """A prompt-forgetting task on random text states (50 forget prompts and their overrides, 64
    retain prompts), with the run's guidance and prompt dropout."""
    import torch

    from pecker.unlearn.task import PromptForgetting

    g = torch.Generator().manual_seed(0)
    emb = {k: torch.randn(n, TEXT_TOKENS, width, generator=g) for k, n in (("retain", 64), ("forget", 50), ("override", 50))}
    uncond, negative = torch.randn(2, TEXT_TOKENS, width, generator=g)
    return PromptForgetting(emb["retain"], emb["forget"], emb["override"], uncond, negative,
                            guidance=s.get("guidance", 1.0), prompt_dropout=s.get("prompt_dropout", 0.0), device=device)


def run_one(network: str, variant: str, batch: int | None, iters: int, warmup: int, threads: int,
            autocast: str = "float32", channels_last: bool = False, checkpointing: bool = False,
            accumulate: int = 1, weights: str = "float32") -> dict:
    import torch

    from pecker import config as C
    from pecker.diffusion.unet import build_unet, n_params
    from pecker.unlearn.settings import method_settings
    from pecker.unlearn.trainer import Unlearner, class_task

    torch.set_num_threads(threads)
    text = network in TEXT_NETWORKS
    paths, ds_name, extra = (["config/config.yaml"], "fashion", []) if text else NETWORKS[network]
    pre = f"datasets.{ds_name}.unlearn"
    over = [*extra, f"{pre}.forget_batch_size=null", f"{pre}.precision.autocast={autocast}",
            f"{pre}.precision.channels_last={str(channels_last).lower()}", f"{pre}.precision.weights={weights}",
            f"{pre}.gradient_checkpointing={str(checkpointing).lower()}", f"{pre}.accumulate={accumulate}"]
    if batch:
        over.append(f"{pre}.batch_size={batch}")
    base = ("sfd" if variant == "sfd" else "pecker") + ("_sneaker" if text else "")
    if variant == "pecker_once":
        over.append(f"{pre}.methods.{base}.mask.refresh=once")
    elif variant == "pecker_every_k":
        over += [f"{pre}.methods.{base}.mask.refresh=every_k", f"{pre}.methods.{base}.mask.refresh_every={iters}"]
    cfg = C.resolve([ROOT / p for p in paths], over)
    ds = cfg["datasets"][ds_name]
    s = method_settings(ds["unlearn"], base, ds_name)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    if text:
        unet_cfg, latent = TEXT_NETWORKS[network]
        teacher = build_unet(unet_cfg, latent)
        task = text_task(s, unet_cfg["cross_attention_dim"], device)
    else:
        teacher = build_unet(ds["unet"], ds["data"])
        task = class_task(s, ds["data"]["num_classes"], teacher, device)
    unl = Unlearner(teacher, ds["diffusion"], s, task, 0, device)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    for _ in range(warmup):
        unl.train_step()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times, refreshed = [], 0
    for _ in range(iters):
        sync()
        t0 = time.perf_counter()
        row = unl.train_step()
        sync()
        times.append(time.perf_counter() - t0)
        refreshed += row["mask_refreshed"]
    out = {
        "network": network, "variant": variant, "params": n_params(teacher), "batch": s["batch_size"],
        "forget_batch": s["forget_batch_size"], "device": str(device), "threads": threads,
        "autocast": autocast, "channels_last": channels_last, "weights": weights, "checkpointing": checkpointing,
        "accumulate": accumulate,
        "sec_per_iter": statistics.mean(times), "sec_min": min(times), "refreshes_timed": refreshed,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    if device.type == "cuda":
        out["peak_cuda_mb"] = torch.cuda.max_memory_allocated() / 2**20
        out["gpu"] = torch.cuda.get_device_name(0)
    if s["mask"]["enabled"]:  # cost of one mask refresh (saliency fwd+bwd and the global threshold)
        c_r, c_f, _ = unl.draw_conditions()
        x_f = unl.gen(torch.randn(len(c_f), *unl.gen.image_shape, device=device), c_f).detach()
        sync()
        t0 = time.perf_counter()
        unl.refresh_mask(x_f)
        sync()
        out["sec_mask_refresh"] = time.perf_counter() - t0
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--iters", type=int, default=3, help="timed iterations, embedded network")
    ap.add_argument("--paper-iters", type=int, default=2, help="timed iterations, CIFAR-10 network")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--batch", type=int, default=None, help="embedded batch (default: config's)")
    ap.add_argument("--paper-batch", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--skip-paper", action="store_true", help="embedded network only")
    ap.add_argument("--networks", nargs="+", choices=[*NETWORKS, *TEXT_NETWORKS], default=["embedded", "cifar10"])
    ap.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    ap.add_argument("--autocast", choices=["float32", "bfloat16"], default="float32", help="unlearn.precision.autocast")
    ap.add_argument("--channels-last", action="store_true", help="unlearn.precision.channels_last")
    ap.add_argument("--weights", choices=["float32", "float16", "bfloat16"], default="float32",
                    help="unlearn.precision.weights (pure low-precision training; excludes --autocast)")
    ap.add_argument("--checkpointing", action="store_true", help="unlearn.gradient_checkpointing")
    ap.add_argument("--accumulate", type=int, default=1, help="unlearn.accumulate (micro-batches per iteration)")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    ap.add_argument("--one", nargs=2, metavar=("NETWORK", "VARIANT"), help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.one:
        net, var = args.one
        batch, iters = (args.batch, args.iters) if net == "embedded" else (args.paper_batch, args.paper_iters)
        print(json.dumps(run_one(net, var, batch, iters, args.warmup, args.threads, args.autocast,
                                 args.channels_last, args.checkpointing, args.accumulate, args.weights)))
        return

    results = []
    for net in ["embedded"] if args.skip_paper else args.networks:
        for var in ["sfd", *[v for v in args.variants if v != "sfd"]]:  # sfd: the ratio's reference
            cmd = [sys.executable, __file__, "--one", net, var, *sys.argv[1:]]
            results.append(run_child(cmd, f"{net}/{var}"))
            r = results[-1]
            print(f"  done {net}/{var}: {r['sec_per_iter']:.3f} s/it", file=sys.stderr, flush=True)

    r0 = results[0]
    print(f"device {r0['device']}{' (' + r0['gpu'] + ')' if 'gpu' in r0 else ''}, {r0['threads']} threads, "
          f"mean of timed iterations after {args.warmup} warm-up; autocast {args.autocast}, weights {args.weights}, channels_last "
          f"{args.channels_last}, gradient checkpointing {args.checkpointing}, micro-batches {args.accumulate}")
    mem_key = "peak_cuda_mb" if "peak_cuda_mb" in r0 else "peak_rss_mb"
    print(f"{'network':12} {'params':>7} {'batch':>6} {'variant':16} {'s/iter':>8} {'x SFD':>6} {'mask s':>7} "
          f"{mem_key:>12}")
    for r in results:
        sfd = next(x for x in results if x["network"] == r["network"] and x["variant"] == "sfd")
        k = args.iters if r["network"] == "embedded" else args.paper_iters
        name = r["variant"] + (f" K={k}" if r["variant"] == "pecker_every_k" else "")
        mask = f"{r['sec_mask_refresh']:.3f}" if "sec_mask_refresh" in r else "-"
        print(f"{r['network']:12} {r['params'] / 1e6:6.2f}M {r['batch']:>3}+{r['forget_batch']:<2} {name:16} "
              f"{r['sec_per_iter']:8.3f} {r['sec_per_iter'] / sfd['sec_per_iter']:6.2f} {mask:>7} {r[mem_key]:12.0f}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
