"""Build, save and load the class-conditional UNet used by every network.

The teacher, the one-step generator and the fake score network share one architecture, chosen by
config key ``unet.arch``:

- ``unet2d`` (absent: the default): diffusers' ``UNet2DModel`` with a class embedding;
- ``ddpm_conditional``: the network of the published SA / SFD / SalUn teachers
  (:mod:`pecker.diffusion.ddpm_conditional`), so their checkpoints can be unlearned as published;
- ``unet2d_condition``: diffusers' ``UNet2DConditionModel`` (Stable Diffusion's UNet), conditioned on
  text-encoder hidden states through cross-attention (concept forgetting, :mod:`pecker.text.stack`).

The class-conditional two are called as ``model(z, t, class_labels=y).sample`` and expose
``model.config`` with ``num_class_embeds``, ``sample_size`` and ``in_channels``; class ``num_classes``
is the null label of classifier-free guidance. The text one is called as
``model(z, t, encoder_hidden_states=h).sample`` (:class:`~pecker.diffusion.conditioning.TextCondition`).
The sidecar's ``network`` says which one a checkpoint holds, and :func:`load_unet` rebuilds any.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import UNet2DConditionModel, UNet2DModel

from pecker import io
from pecker.config import ConfigError
from pecker.diffusion.ddpm_conditional import ARCH as DDPM_CONDITIONAL
from pecker.diffusion.ddpm_conditional import DDPMConditionalUNet, arch_config

UNET2D = "unet2d"
UNET2D_CONDITION = "unet2d_condition"
ARCHS = (UNET2D, DDPM_CONDITIONAL, UNET2D_CONDITION)
_CONFIG_CLASSES = {UNET2D: UNet2DModel, UNET2D_CONDITION: UNet2DConditionModel}


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


def ddpm_conditional_kwargs(unet_cfg: dict, data_cfg: dict) -> dict:
    """The same config keys in :mod:`pecker.diffusion.ddpm_conditional`'s terms (``ch`` = base
    channels, ``num_res_blocks`` = layers per block, ...)."""
    return arch_config({
        "ch": unet_cfg["base_channels"], "ch_mult": list(unet_cfg["channel_mult"]),
        "num_res_blocks": unet_cfg["layers_per_block"], "attn_resolutions": list(unet_cfg["attention_resolutions"]),
        "dropout": unet_cfg["dropout"], "resolution": data_cfg["resolution"], "in_channels": data_cfg["channels"],
        "out_ch": data_cfg["channels"], "num_classes": data_cfg.get("num_classes", 10),
        "norm_groups": unet_cfg.get("norm_num_groups", 32),
    })


def unet2d_condition_kwargs(unet_cfg: dict, data_cfg: dict) -> dict:
    """The same keys as ``UNet2DConditionModel`` arguments: cross-attention blocks at
    ``attention_resolutions``, ``cross_attention_dim`` = the text encoder's hidden size; no class
    embedding (the null condition is the empty prompt's embedding)."""
    res = data_cfg["resolution"]
    mult = unet_cfg["channel_mult"]
    sizes = [res // 2**i for i in range(len(mult))]
    attn = set(unet_cfg["attention_resolutions"])
    if unet_cfg.get("cross_attention_dim") is None:
        raise ValueError("config key 'unet.cross_attention_dim': required for unet.arch unet2d_condition "
                         "(the text encoder's hidden size: 384 for MiniLM, 768 for SD v1)")
    return dict(
        sample_size=res,
        in_channels=data_cfg["channels"],
        out_channels=data_cfg["channels"],
        block_out_channels=tuple(unet_cfg["base_channels"] * m for m in mult),
        layers_per_block=unet_cfg["layers_per_block"],
        down_block_types=tuple("CrossAttnDownBlock2D" if s in attn else "DownBlock2D" for s in sizes),
        up_block_types=tuple("CrossAttnUpBlock2D" if s in attn else "UpBlock2D" for s in reversed(sizes)),
        dropout=unet_cfg["dropout"],
        attention_head_dim=unet_cfg.get("attention_head_dim", 8),
        norm_num_groups=unet_cfg.get("norm_num_groups", 32),
        cross_attention_dim=int(unet_cfg["cross_attention_dim"]),
    )


def build_unet(unet_cfg: dict, data_cfg: dict) -> torch.nn.Module:
    """The network ``unet.arch`` names, freshly initialised."""
    arch = unet_cfg.get("arch", UNET2D)
    if arch == DDPM_CONDITIONAL:
        return DDPMConditionalUNet(ddpm_conditional_kwargs(unet_cfg, data_cfg))
    if arch == UNET2D_CONDITION:
        return UNet2DConditionModel(**unet2d_condition_kwargs(unet_cfg, data_cfg))
    if arch != UNET2D:
        raise ValueError(f"config key 'unet.arch': unknown architecture {arch!r} (one of {', '.join(ARCHS)})")
    return UNet2DModel(**unet_kwargs(unet_cfg, data_cfg))


def network_name(model: torch.nn.Module) -> str:
    if isinstance(model, DDPMConditionalUNet):
        return DDPM_CONDITIONAL
    return UNET2D_CONDITION if isinstance(model, UNet2DConditionModel) else UNET2D


def is_text_conditional(model: torch.nn.Module) -> bool:
    return isinstance(model, UNet2DConditionModel)


def null_label(model: UNet2DModel) -> int | None:
    """Index of the null (unconditional) label; None for a text-conditional UNet (its null condition
    is the empty prompt)."""
    if is_text_conditional(model):
        return None
    return model.config.num_class_embeds - 1


def enable_gradient_checkpointing(model: torch.nn.Module, key: str) -> None:
    """Recompute ``model``'s block activations in the backward pass instead of storing them (diffusers'
    own mechanism, non-reentrant ``torch.utils.checkpoint`` with the RNG state preserved, so dropout
    draws and results are those of the plain forward). Raises :class:`ConfigError` naming ``key``
    for a network without it (``unet.arch: ddpm_conditional``)."""
    if not getattr(model, "_supports_gradient_checkpointing", False):
        raise ConfigError(f"config key '{key}': {type(model).__name__} has no gradient checkpointing "
                          "(diffusers' UNet2DModel and UNet2DConditionModel have it)")
    model.enable_gradient_checkpointing()


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def save_unet(prefix: str | Path, model: torch.nn.Module, meta: dict | None = None) -> Path:
    """Save weights as safetensors and a sidecar holding the architecture (``network`` and its
    config), so it can be rebuilt."""
    net = network_name(model)
    arch = {"arch_config": dict(model.arch)} if net == DDPM_CONDITIONAL else {"unet_config": dict(model.config)}
    sidecar = {"kind": "unet", "network": net, **arch, "n_params": n_params(model)}
    sidecar.update(meta or {})
    return io.save_checkpoint(prefix, model.state_dict(), sidecar)


def load_unet(prefix: str | Path, device: str | torch.device = "cpu") -> tuple[torch.nn.Module, dict]:
    """Verify the checksums, rebuild the architecture from the sidecar, load the weights strictly."""
    tensors, meta = io.load_checkpoint(prefix, device=device)
    net = meta.get("network", UNET2D)
    if net == DDPM_CONDITIONAL:
        model = DDPMConditionalUNet(arch_config(meta["arch_config"]))
    elif net in _CONFIG_CLASSES:
        cls = _CONFIG_CLASSES[net]
        cfg = {k: v for k, v in meta["unet_config"].items() if not k.startswith("_")}
        for key, value in cfg.items():
            if isinstance(value, list):
                cfg[key] = tuple(value)
        model = cls.from_config(cfg)
    else:
        raise io.IntegrityError(f"{prefix}.json: unknown network {net!r} (one of {', '.join(ARCHS)})")
    model.load_state_dict(tensors, strict=True)
    return model.to(device), meta
