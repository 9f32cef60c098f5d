"""Build, save and load the class-conditional diffusers ``UNet2DModel`` used by every network.

The teacher, the one-step generator and the fake score network share this architecture. Class
``num_classes`` (the last embedding row) is the null label used for classifier-free guidance.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import UNet2DModel

from pecker import io


def unet_kwargs(unet_cfg: dict, data_cfg: dict) -> dict:
    """Translate the paper's notation (base channels, multipliers, attention resolutions) into
    ``UNet2DModel`` constructor arguments."""
    res = data_cfg["resolution"]
    mult = unet_cfg["channel_mult"]
    channels = [unet_cfg["base_channels"] * m for m in mult]
    sizes = [res // 2**i for i in range(len(mult))]
    attn = set(unet_cfg["attention_resolutions"])
    down = ["AttnDownBlock2D" if s in attn else "DownBlock2D" for s in sizes]
    up = ["AttnUpBlock2D" if s in attn else "UpBlock2D" for s in reversed(sizes)]
    return dict(
        sample_size=res,
        in_channels=data_cfg["channels"],
        out_channels=data_cfg["channels"],
        block_out_channels=tuple(channels),
        layers_per_block=unet_cfg["layers_per_block"],
        down_block_types=tuple(down),
        up_block_types=tuple(up),
        dropout=unet_cfg["dropout"],
        attention_head_dim=unet_cfg.get("attention_head_dim", 8),
        norm_num_groups=unet_cfg.get("norm_num_groups", 32),
        num_class_embeds=data_cfg.get("num_classes", 10) + 1,
    )


def build_unet(unet_cfg: dict, data_cfg: dict) -> UNet2DModel:
    return UNet2DModel(**unet_kwargs(unet_cfg, data_cfg))


def null_label(model: UNet2DModel) -> int:
    """Index of the null (unconditional) label."""
    return model.config.num_class_embeds - 1


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def save_unet(prefix: str | Path, model: UNet2DModel, meta: dict | None = None) -> Path:
    """Save weights as safetensors and a sidecar holding the architecture, so it can be rebuilt."""
    sidecar = {"kind": "unet", "unet_config": dict(model.config), "n_params": n_params(model)}
    sidecar.update(meta or {})
    return io.save_checkpoint(prefix, model.state_dict(), sidecar)


def load_unet(prefix: str | Path, device: str | torch.device = "cpu") -> tuple[UNet2DModel, dict]:
    """Verify the checksum, rebuild the architecture from the sidecar, load the weights."""
    tensors, meta = io.load_checkpoint(prefix, device=device)
    cfg = {k: v for k, v in meta["unet_config"].items() if not k.startswith("_")}
    for key in ("block_out_channels", "down_block_types", "up_block_types"):
        cfg[key] = tuple(cfg[key])
    model = UNet2DModel(**cfg)
    model.load_state_dict(tensors, strict=True)
    return model.to(device), meta
