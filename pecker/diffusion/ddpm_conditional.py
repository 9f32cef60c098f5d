"""The class-conditional DDPM network of the Selective Amnesia (SA) authors (docs/published-teachers.md).

SA, SalUn and SFD all unlearn the same class-conditional teachers (CIFAR-10 trained 800k iterations,
STL-10 250k). Their network is the DDIM / DDPM "simple" UNet with a class branch, and diffusers'
``UNet2DModel`` cannot express it:

- a sinusoidal timestep embedding (width ``ch``) goes through a two-layer MLP to ``4 ch``
  (``temb.dense.0``, ``temb.dense.1``, swish in between);
- a learned class table ``classes_emb`` (``num_classes x ch``) plus one learned *null* vector
  ``null_classes_emb`` (``ch``) go through their own two-layer MLP to ``4 ch`` (``cemb.dense.*``);
- every residual block concatenates the two embeddings (``8 ch``) and adds one linear projection of
  their swish (``temb_cemb_proj``) after its first convolution;
- GroupNorm(32, eps 1e-6), swish, single-head self-attention at the ``attn_resolutions``, DDPM-style
  resampling: strided 3x3 convolution after zero padding on the right/bottom, nearest x2 then 3x3.

This module rebuilds that network from a plain dict (:data:`CIFAR10`, :data:`STL10`); its parameter
names and shapes are those of the published checkpoints, so their state dicts load with
``strict=True`` (the network has no buffers). See :mod:`pecker.diffusion.published` for reading
the published files.

Call interface: ``model(z, t, class_labels=labels).sample``, exactly like a class-conditional
``UNet2DModel``. ``model.config`` has ``num_class_embeds = num_classes + 1``, so
:func:`pecker.diffusion.unet.null_label` returns ``num_classes``.

Null class. The official code has no null row in its class table: at test time it computes the
class embedding and replaces it, for the samples to drop (all of them for the unconditional pass),
by the separate learned vector ``null_classes_emb``. Here label index ``num_classes`` selects that
vector (labels ``0 .. num_classes - 1`` select rows of ``classes_emb``); the parameters stay
separate, as in the checkpoints, so the mapping changes no weight.

Guidance. The official sampler returns ``(1 + w) eps(c) - w eps(null)`` (its ``cond_scale = w``;
``w = 0``: unguided). The project's conditions use diffusers' form ``eps(u) + s (eps(c) - eps(u))``
(:mod:`pecker.diffusion.conditioning`). They are the same prediction with ``s = 1 + w``:
``eps(u) + (1 + w)(eps(c) - eps(u)) = (1 + w) eps(c) - w eps(u)``. The SA evaluation's guidance
(its default ``--cond_scale 2.0``) is ``s = 3.0`` here; the official ``w = 0`` is ``s = 1`` (one
call, no null pass).

The forward pass follows the official order of operations: in a one-off check (official module
instantiated offline, same weights, CPU float32) the conditional, null and guided outputs were
bit-identical. Differences from the official module, none of which changes a published state dict
or output: the official residual block sizes the class half of its projection input at a fixed 512
(``4 ch`` only for ``ch = 128``), so it only runs at ``ch = 128``; here that half is ``4 ch`` for
every ``ch``. ``norm_groups`` (32 officially) is configurable so tiny test networks can be built.
The official "bayesian" variant (an extra ``logvar`` parameter) is not built: the published
teachers are the "simple" type.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

ARCH = "ddpm_conditional"

#: Keys of the plain-dict configuration and their defaults (``None``: required).
DEFAULTS: dict[str, Any] = {
    "ch": None,  # base width; embeddings are 4 * ch
    "ch_mult": None,  # width multiplier per resolution level
    "num_res_blocks": None,  # residual blocks per level on the way down (one more on the way up)
    "attn_resolutions": None,  # feature-map sizes with self-attention after every block
    "dropout": 0.0,
    "resolution": None,  # input height = width
    "in_channels": 3,
    "out_ch": 3,
    "num_classes": None,  # real classes; label num_classes is the null class
    "resamp_with_conv": True,  # convolutions in down/up-sampling (else average pooling / plain nearest)
    "norm_groups": 32,
}

#: The configurations of the published teachers (SA's ``ddpm/configs/{cifar10,stl10}_train.yml``).
CIFAR10: dict[str, Any] = {
    "ch": 128, "ch_mult": [1, 2, 2, 2], "num_res_blocks": 2, "attn_resolutions": [16], "dropout": 0.1,
    "resolution": 32, "in_channels": 3, "out_ch": 3, "num_classes": 10, "resamp_with_conv": True,
    "norm_groups": 32,
}
STL10: dict[str, Any] = {**CIFAR10, "ch_mult": [1, 2, 2, 2, 4], "resolution": 64}

#: Parameter counts of the two configurations (tests/test_ddpm_conditional.py).
N_PARAMS = {"cifar10": 38_632_323, "stl10": 83_159_683}


def arch_config(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """Complete ``cfg`` with :data:`DEFAULTS`; reject unknown or missing keys. JSON-able result."""
    unknown = set(cfg) - set(DEFAULTS)
    if unknown:
        raise ValueError(f"unknown {ARCH} config keys {sorted(unknown)}; known: {sorted(DEFAULTS)}")
    out = {k: cfg.get(k, v) for k, v in DEFAULTS.items()}
    missing = [k for k, v in out.items() if v is None]
    if missing:
        raise ValueError(f"{ARCH} config lacks {missing}")
    out["ch_mult"] = [int(m) for m in out["ch_mult"]]
    out["attn_resolutions"] = [int(r) for r in out["attn_resolutions"]]
    for key in ("ch", "num_res_blocks", "resolution", "in_channels", "out_ch", "num_classes", "norm_groups"):
        out[key] = int(out[key])
    out["dropout"] = float(out["dropout"])
    out["resamp_with_conv"] = bool(out["resamp_with_conv"])
    if out["resolution"] % 2 ** (len(out["ch_mult"]) - 1):
        raise ValueError(f"resolution {out['resolution']} is not divisible by 2^(levels - 1)")
    return out


class ModelConfig(dict):
    """The architecture dict with attribute access, like diffusers' ``FrozenDict`` config."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


@dataclass
class DDPMConditionalOutput:
    """Return value of the forward pass, like diffusers' ``UNet2DOutput``."""

    sample: torch.Tensor


def timestep_features(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal features of the timesteps: ``[sin(t f_i), cos(t f_i)]`` with geometric frequencies
    ``f_i = 10000^(-i / (dim/2 - 1))``, ``i = 0 .. dim/2 - 1`` (zero column appended for odd ``dim``)."""
    half = dim // 2
    scale = math.log(10000) / (half - 1)
    freqs = torch.exp(-scale * torch.arange(half, dtype=torch.float32, device=t.device))
    args = t.float()[:, None] * freqs[None, :]
    feats = torch.cat([torch.sin(args), torch.cos(args)], dim=1)
    return F.pad(feats, (0, 1)) if dim % 2 else feats


def swish(x: torch.Tensor) -> torch.Tensor:
    """``x * sigmoid(x)``, written out rather than ``F.silu``: the published code computes it this way
    and ``F.silu`` differs in the last bits (float32 outputs then match the official ones exactly)."""
    return x * torch.sigmoid(x)


def _norm(channels: int, groups: int) -> nn.GroupNorm:
    return nn.GroupNorm(groups, channels, eps=1e-6, affine=True)


class _Container(nn.Module):
    """Attribute holder for submodules (gives the checkpoints' key paths, e.g. ``temb.dense.0``)."""

    def forward(self, *args):  # pragma: no cover - never called
        raise RuntimeError("container module")


class _EmbeddingMLP(nn.Module):
    """Two linear layers with swish in between (``dense.0``, ``dense.1``)."""

    def __init__(self, width: int, emb: int):
        super().__init__()
        self.dense = nn.ModuleList([nn.Linear(width, emb), nn.Linear(emb, emb)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dense[1](swish(self.dense[0](x)))


class ResBlock(nn.Module):
    """Pre-activation residual block; the joint time/class embedding is added after ``conv1``."""

    def __init__(self, cin: int, cout: int, emb: int, dropout: float, groups: int):
        super().__init__()
        self.norm1 = _norm(cin, groups)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.temb_cemb_proj = nn.Linear(emb, cout)
        self.norm2 = _norm(cout, groups)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        if cin != cout:
            self.nin_shortcut = nn.Conv2d(cin, cout, 1)

    def forward(self, x: torch.Tensor, emb_act: torch.Tensor) -> torch.Tensor:
        """``emb_act``: swish of the concatenated (time, class) embedding, ``(B, 8 ch)``."""
        h = self.conv1(swish(self.norm1(x)))
        h = h + self.temb_cemb_proj(emb_act)[:, :, None, None]
        h = self.conv2(self.dropout(swish(self.norm2(h))))
        skip = self.nin_shortcut(x) if hasattr(self, "nin_shortcut") else x
        return skip + h


class SelfAttention(nn.Module):
    """Single-head self-attention over the pixels with 1x1-convolution projections, residual."""

    def __init__(self, channels: int, groups: int):
        super().__init__()
        self.norm = _norm(channels, groups)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, hgt, wid = x.shape
        hn = self.norm(x)
        q = self.q(hn).reshape(b, c, hgt * wid).transpose(1, 2)  # (b, n, c)
        k = self.k(hn).reshape(b, c, hgt * wid)  # (b, c, n)
        v = self.v(hn).reshape(b, c, hgt * wid)  # (b, c, n)
        weights = torch.softmax(torch.bmm(q, k) * (int(c) ** -0.5), dim=2)  # (b, n_query, n_key)
        out = torch.bmm(v, weights.transpose(1, 2)).reshape(b, c, hgt, wid)
        return x + self.proj_out(out)


class Downsample(nn.Module):
    def __init__(self, channels: int, with_conv: bool):
        super().__init__()
        if with_conv:
            self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if hasattr(self, "conv"):
            return self.conv(F.pad(x, (0, 1, 0, 1)))
        return F.avg_pool2d(x, 2, 2)


class Upsample(nn.Module):
    def __init__(self, channels: int, with_conv: bool):
        super().__init__()
        if with_conv:
            self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        return self.conv(x) if hasattr(self, "conv") else x


class DDPMConditionalUNet(nn.Module):
    """SA's class-conditional DDPM UNet (see the module docstring) from a plain dict config."""

    def __init__(self, cfg: Mapping[str, Any]):
        super().__init__()
        a = arch_config(cfg)
        self.arch = a
        self.config = ModelConfig(
            a, arch=ARCH, num_class_embeds=a["num_classes"] + 1, sample_size=a["resolution"],
            out_channels=a["out_ch"],
        )
        ch, mult, nrb, groups = a["ch"], a["ch_mult"], a["num_res_blocks"], a["norm_groups"]
        emb = 4 * ch
        joint = 2 * emb  # width of the concatenated (time, class) embedding
        levels = len(mult)

        self.temb = _EmbeddingMLP(ch, emb)
        self.classes_emb = nn.Embedding(a["num_classes"], ch)
        self.null_classes_emb = nn.Parameter(torch.randn(ch))
        self.cemb = _EmbeddingMLP(ch, emb)
        self.conv_in = nn.Conv2d(a["in_channels"], ch, 3, padding=1)

        def block(cin, cout):
            return ResBlock(cin, cout, joint, a["dropout"], groups)

        # encoder: level i works at resolution / 2^i with width ch * mult[i]
        widths = [ch * m for m in mult]
        skips = [ch]  # widths of the feature maps kept for the decoder, in push order
        self.down = nn.ModuleList()
        cur = ch
        for i in range(levels):
            size = a["resolution"] // 2**i
            lvl = _Container()
            lvl.block = nn.ModuleList()
            lvl.attn = nn.ModuleList()
            for _ in range(nrb):
                lvl.block.append(block(cur, widths[i]))
                cur = widths[i]
                if size in a["attn_resolutions"]:
                    lvl.attn.append(SelfAttention(cur, groups))
                skips.append(cur)
            if i < levels - 1:
                lvl.downsample = Downsample(cur, a["resamp_with_conv"])
                skips.append(cur)
            self.down.append(lvl)

        self.mid = _Container()
        self.mid.block_1 = block(cur, cur)
        self.mid.attn_1 = SelfAttention(cur, groups)
        self.mid.block_2 = block(cur, cur)

        # decoder: built from the deepest level up, stored by level index like the encoder
        ups: list[nn.Module] = [None] * levels  # type: ignore[list-item]
        for i in reversed(range(levels)):
            size = a["resolution"] // 2**i
            lvl = _Container()
            lvl.block = nn.ModuleList()
            lvl.attn = nn.ModuleList()
            for _ in range(nrb + 1):
                lvl.block.append(block(cur + skips.pop(), widths[i]))
                cur = widths[i]
                if size in a["attn_resolutions"]:
                    lvl.attn.append(SelfAttention(cur, groups))
            if i > 0:
                lvl.upsample = Upsample(cur, a["resamp_with_conv"])
            ups[i] = lvl
        assert not skips
        self.up = nn.ModuleList(ups)

        self.norm_out = _norm(cur, groups)
        self.conv_out = nn.Conv2d(cur, a["out_ch"], 3, padding=1)

    @property
    def dtype(self) -> torch.dtype:
        return self.conv_in.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.conv_in.weight.device

    def class_embedding_table(self) -> torch.Tensor:
        """``(num_classes + 1, ch)``: the class rows, then the null vector as row ``num_classes``."""
        return torch.cat([self.classes_emb.weight, self.null_classes_emb[None, :]], dim=0)

    def forward(self, sample: torch.Tensor, timestep, class_labels: torch.Tensor | None = None,
                return_dict: bool = True):
        """Noise prediction ``eps(sample, timestep, class_labels)``; ``class_labels == num_classes``
        is the null class. ``timestep``: a number or a tensor of shape ``()`` or ``(B,)``."""
        if class_labels is None:
            null = self.arch["num_classes"]
            raise ValueError(f"{ARCH} is class-conditional: pass class_labels (null label {null})")
        b = sample.shape[0]
        if sample.shape[2] != self.arch["resolution"] or sample.shape[3] != self.arch["resolution"]:
            raise ValueError(f"{ARCH} built for {self.arch['resolution']}px input, got {tuple(sample.shape)}")
        t = timestep if torch.is_tensor(timestep) else torch.tensor(timestep, device=sample.device)
        t = t.to(sample.device).reshape(-1)
        if t.numel() == 1 and b != 1:
            t = t.expand(b)

        temb = self.temb(timestep_features(t, self.arch["ch"]).to(self.dtype))
        cemb = self.cemb(F.embedding(class_labels.to(sample.device).reshape(-1), self.class_embedding_table()))
        emb_act = swish(torch.cat([temb, cemb], dim=-1))

        hs = [self.conv_in(sample)]
        for lvl in self.down:
            for j, blk in enumerate(lvl.block):
                h = blk(hs[-1], emb_act)
                if len(lvl.attn):
                    h = lvl.attn[j](h)
                hs.append(h)
            if hasattr(lvl, "downsample"):
                hs.append(lvl.downsample(hs[-1]))

        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(hs[-1], emb_act)), emb_act)

        for lvl in reversed(self.up):
            for j, blk in enumerate(lvl.block):
                h = blk(torch.cat([h, hs.pop()], dim=1), emb_act)
                if len(lvl.attn):
                    h = lvl.attn[j](h)
            if hasattr(lvl, "upsample"):
                h = lvl.upsample(h)

        out = self.conv_out(swish(self.norm_out(h)))
        return DDPMConditionalOutput(out) if return_dict else (out,)


def build_ddpm_conditional(cfg: Mapping[str, Any]) -> DDPMConditionalUNet:
    return DDPMConditionalUNet(cfg)
