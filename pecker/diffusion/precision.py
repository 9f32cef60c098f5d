"""Numerics of a training loop: config key ``precision`` of ``teacher`` and of ``unlearn`` (common
settings or one method's entry).

- ``autocast``: ``float32`` (absent: the default) or ``bfloat16``, :func:`torch.autocast` around the
  forward passes of the networks and the losses (backward passes run outside it, as torch's AMP
  guide asks). Weights, gradients, optimiser moments and the EMA stay float32; every network
  output is cast back to float32 where the losses read it (:meth:`Condition.eps`), so sums and
  normalisers are float32. bfloat16 has float32's exponent range, so no loss scaling is needed
  (float16 would need it, and the loop's hand-split ``autograd.grad`` calls do not implement it).
  On a GPU this is the mixed precision of the paper-scale runs; on a CPU it pays off where the CPU
  has bfloat16 matrix units (AMX, AVX512-BF16).
- ``channels_last``: the networks' weights in channels-last memory format (convolutions then
  run in NHWC); saved files are contiguous as always.
- ``weights``: ``float32`` (absent: the default), ``float16`` or ``bfloat16``: *pure* low-precision
  training, the official SD code's setting (float16, Adam eps 1e-6, no loss scaling): the networks'
  weights, hence their gradients, the Adam moments and the EMA, are held in this dtype. Every network
  call casts its inputs to the weights' dtype (:meth:`pecker.diffusion.conditioning.Condition.call`)
  and its output back to float32, so samples, losses and their normalisers stay float32. Excludes
  ``autocast`` (nothing is left to autocast); only the SFD loop takes it (``unlearn.precision``).

Both change the numbers a run produces, so they are explicit choices, off by default: when set,
they are part of the stage hash (the key sits in the settings the hash covers), and every sidecar
records :meth:`Precision.describe`. The key has no schema default, so configs that leave it out
keep their stage hashes.
"""

from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass

import torch

from pecker.config import ConfigError

AUTOCAST_DTYPES = {"float32": None, "bfloat16": torch.bfloat16}
WEIGHT_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass(frozen=True)
class Precision:
    autocast: str = "float32"
    channels_last: bool = False
    weights: str = "float32"

    @classmethod
    def from_config(cls, cfg: dict | None, where: str, device: torch.device | str = "cpu",
                    pure: bool = False) -> "Precision":
        """From a ``precision`` entry (``None``: the defaults) for a run on ``device``; ``where`` names
        the key in errors; ``pure``: the loop supports low-precision ``weights``."""
        cfg = cfg or {}  # validated by the schema ($defs/precision)
        prec = cls(autocast=cfg.get("autocast", "float32"), channels_last=bool(cfg.get("channels_last", False)),
                   weights=cfg.get("weights", "float32"))
        device = torch.device(device)
        if prec.weights != "float32" and not pure:
            raise ConfigError(f"config key '{where}.weights': only the SFD loop trains low-precision weights "
                              "(unlearn.precision); use autocast here")
        if prec.weights != "float32" and prec.autocast != "float32":
            raise ConfigError(f"config key '{where}': weights {prec.weights} and autocast {prec.autocast} exclude "
                              "each other (pure low-precision weights leave nothing to autocast)")
        bf16 = "bfloat16" in (prec.autocast, prec.weights)
        if bf16 and device.type == "cuda" and not torch.cuda.is_bf16_supported():
            key = "autocast" if prec.autocast == "bfloat16" else "weights"
            raise ConfigError(f"config key '{where}.{key}': this GPU has no bfloat16 support (use float32)")
        return prec

    def forward(self, device: torch.device | str) -> contextlib.AbstractContextManager:
        """The context of the forward passes (a no-op at float32)."""
        dtype = AUTOCAST_DTYPES[self.autocast]
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=torch.device(device).type, dtype=dtype)

    @property
    def weight_dtype(self) -> torch.dtype:
        return WEIGHT_DTYPES[self.weights]

    def prepare(self, *modules: torch.nn.Module) -> None:
        """Put ``modules`` in the configured dtype and memory format (in place; a no-op by default).
        Call it before the optimisers and the EMA are made from the parameters."""
        for m in modules:
            if self.weights != "float32":
                # torch's own cast: diffusers' ModelMixin.to warns on every cast about modules to keep in
                # float32 (it has none to name here)
                torch.nn.Module.to(m, dtype=self.weight_dtype)
            if self.channels_last:
                m.to(memory_format=torch.channels_last)

    def describe(self) -> dict:
        """What the sidecars record."""
        return asdict(self)
