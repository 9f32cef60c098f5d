"""Small builders shared by the tests (tiny datasets and configs; nothing downloads)."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from pecker import config as cfgmod
from pecker import io

REPO = Path(__file__).resolve().parents[1]


def tiny_dataset(tmp: Path, n_per_class: int = 8, res: int = 8, channels: int = 1, seed: int = 0) -> Path:
    """A prepared dataset of easy classes: class c brightens row c (c < res) or column c - res."""
    rng = np.random.default_rng(seed)
    imgs, labels = [], []
    for c in range(10):
        for _ in range(n_per_class):
            img = rng.integers(0, 60, (res, res, channels))
            if c < res:
                img[c] += 180
            else:
                img[:, c - res] += 180
            imgs.append(img)
            labels.append(c)
    out = tmp / "data"
    io.save_npz(out / "train.npz", images=np.asarray(imgs, np.uint8), labels=np.asarray(labels, np.int64))
    io.atomic_write_json(out / "meta.json", {"source": "synthetic", "class_names": [str(c) for c in range(10)],
                                              "resolution": res})
    return out


def tiny_config(**teacher) -> dict:
    """The resolved CI config (config/test.yaml) with teacher overrides."""
    cfg = cfgmod.resolve([REPO / "config" / "test.yaml"])
    ds = copy.deepcopy(cfgmod.dataset_config(cfg, "mnist-tiny"))
    ds["unet"].update(base_channels=8, norm_num_groups=4)
    ds["teacher"].update(teacher)
    return ds


def snakemake_cmd(workdir: Path, *args: str) -> list[str]:
    """The Snakemake command line of the tests: this repo's workflow, run in ``workdir``, on 2 cores;
    ``config/test.yaml`` unless ``args`` name other config files."""
    cfg = [] if "--configfile" in args else ["--configfile", str(REPO / "config" / "test.yaml")]
    return [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(workdir), *cfg,
            "--cores", "2", *args]


def snakemake_env() -> dict:
    return dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
                HF_HUB_OFFLINE="1")


def snakemake(workdir: Path, *args: str, check: bool = True, timeout: int = 1800) -> subprocess.CompletedProcess:
    res = subprocess.run(snakemake_cmd(workdir, *args), capture_output=True, text=True, env=snakemake_env(),
                         timeout=timeout)
    if check and res.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{res.stdout[-4000:]}\n{res.stderr[-8000:]}")
    return res


class Planted:
    """A pickle payload that runs ``touch marker`` when unpickled by a plain unpickler (for tests that
    a restricted unpickler refuses it without running it)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


SD_SCHEDULE = {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012}


def tiny_sd_folder(path: Path, tokenizer):
    """A Stable Diffusion model folder in diffusers' layout with tiny random weights (CLIP text
    encoder, AutoencoderKL, UNet2DConditionModel, scheduler); the tokenizer is MiniLM's (no CLIP vocab
    offline); returns the UNet."""
    import torch
    from diffusers import AutoencoderKL, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    text = CLIPTextModel(CLIPTextConfig(vocab_size=tokenizer.vocab_size, hidden_size=16, intermediate_size=32,
                                        num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=32))
    vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 8), latent_channels=4,
                        norm_num_groups=4, sample_size=16)
    unet = UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(8, 16),
                                down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), layers_per_block=1,
                                cross_attention_dim=16, attention_head_dim=4, norm_num_groups=4)
    sched = DDPMScheduler(**SD_SCHEDULE)
    StableDiffusionPipeline(vae=vae, text_encoder=text, tokenizer=tokenizer, unet=unet, scheduler=sched,
                            safety_checker=None, feature_extractor=None,
                            requires_safety_checker=False).save_pretrained(path)
    return unet


_LDM_RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
               "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}
_LDM_TOP = {"conv_in": "input_blocks.0.0", "time_embedding.linear_1": "time_embed.0",
            "time_embedding.linear_2": "time_embed.2", "conv_norm_out": "out.0", "conv_out": "out.2"}


def ldm_unet_name(name: str, layers_per_block: int, up_has_attention: list[bool]) -> str:
    """The latent-diffusion (``openaimodel.UNetModel``) name of a diffusers ``UNet2DConditionModel``
    parameter of the SD v1.x layout, without the ``diffusion_model.`` prefix: the layout SA's released
    Fisher is written in (tests build such files from a tiny UNet; the package maps them back with
    diffusers' own converter)."""
    import re

    n = layers_per_block + 1
    for k, v in _LDM_TOP.items():
        if name.startswith(k + "."):
            return v + name[len(k):]

    def resnet(rest: str) -> str:
        part, _, tail = rest.partition(".")
        return f"{_LDM_RESNET[part]}.{tail}"

    if m := re.match(r"down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", name):
        b, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4]
        i = 1 + b * n + j
        return f"input_blocks.{i}.0.{resnet(rest)}" if kind == "resnets" else f"input_blocks.{i}.1.{rest}"
    if m := re.match(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)", name):
        return f"input_blocks.{(int(m[1]) + 1) * n}.0.op.{m[2]}"
    if m := re.match(r"mid_block\.(resnets|attentions)\.(\d+)\.(.+)", name):
        kind, j, rest = m[1], int(m[2]), m[3]
        return f"middle_block.{2 * j}.{resnet(rest)}" if kind == "resnets" else f"middle_block.1.{rest}"
    if m := re.match(r"up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", name):
        b, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4]
        i = b * n + j
        return f"output_blocks.{i}.0.{resnet(rest)}" if kind == "resnets" else f"output_blocks.{i}.1.{rest}"
    if m := re.match(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.+)", name):
        b = int(m[1])
        return f"output_blocks.{b * n + n - 1}.{2 if up_has_attention[b] else 1}.conv.{m[2]}"
    raise KeyError(f"no latent-diffusion name for {name}")


def released_fisher_dict(model, seed: int = 0) -> tuple[dict, dict]:
    """A Fisher in the layout of SA's ``full_fisher_dict.pkl`` for ``model`` (a diffusers SD-layout
    UNet): ``{"diffusion_model.<ldm name>": positive tensor}``, and the same tensors by diffusers name."""
    import torch

    cfg = model.config
    up_attn = ["CrossAttn" in t for t in cfg.up_block_types]
    gen = torch.Generator().manual_seed(seed)
    by_name = {n: torch.rand(p.shape, generator=gen) + 0.01 for n, p in model.named_parameters()}
    ldm = {"diffusion_model." + ldm_unet_name(n, cfg.layers_per_block, up_attn): v for n, v in by_name.items()}
    return ldm, by_name
