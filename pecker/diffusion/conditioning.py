"""What a diffusion UNet is conditioned on, and how it is called with it (docs/method.md sections 2-4).

A *condition* is a batch of conditioning inputs, one per sample, that knows how to call a network:

- :class:`ClassCondition`: class labels of a class-conditional ``UNet2DModel`` (``class_labels=``).
  The null label (the last embedding row, :func:`pecker.diffusion.unet.null_label`) is the
  unconditional input of classifier-free guidance.
- :class:`TextCondition`: text-encoder hidden states of a ``UNet2DConditionModel``
  (``encoder_hidden_states=``), with an unconditional or negative embedding per sample.

Both carry a guidance scale ``w`` that is applied inside the prediction, in diffusers' form
``e(u) + w (e(c) - e(u))`` (``w = 1``: no guidance, one network call; the official SA / SalUn code's
``(1 + w') e(c) - w' e(u)`` is ``w = 1 + w'``). Conditions of one type concatenate (:func:`cat`) and
slice, so a loss batches several terms into one network call exactly as it would with label
tensors. Losses, samplers, the mask and the unlearning loop see only this interface; a new modality
is a new subclass, not a change to them.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, replace
from typing import Sequence

import torch


class Condition(ABC):
    """Interface of a batch of conditions (see the module docstring); subclasses are frozen dataclasses."""

    guidance: float = 1.0

    @abstractmethod
    def __len__(self) -> int:
        ...

    @abstractmethod
    def __getitem__(self, idx) -> "Condition":
        ...

    @abstractmethod
    def to(self, device: torch.device | str) -> "Condition":
        ...

    @abstractmethod
    def unconditional(self) -> "Condition":
        """The unconditional (or negative) counterpart of every sample, unguided."""

    @abstractmethod
    def call(self, model, z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The network's unguided noise prediction at these conditions (floating inputs cast to the
        dtype of the network's weights, :func:`as_input`; the output in that dtype)."""

    @abstractmethod
    def _cat(self, others: Sequence["Condition"]) -> "Condition":
        ...

    def with_guidance(self, scale: float) -> "Condition":
        return replace(self, guidance=float(scale))

    def eps(self, model, z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Noise prediction, guided when ``guidance != 1`` (conditional and unconditional halves in
        one batched call). Always float32, also when the network ran under bfloat16 autocast
        (:mod:`pecker.diffusion.precision`; at float32 ``.float()`` is the tensor itself)."""
        if self.guidance == 1.0:
            return self.call(model, z, t).float()
        both = cat([self.with_guidance(1.0), self.unconditional()])
        cond, uncond = both.call(model, torch.cat([z, z]), torch.cat([t, t])).float().chunk(2)
        return uncond + self.guidance * (cond - uncond)

    @abstractmethod
    def describe(self) -> dict:
        """JSON-able summary (recorded in sidecars)."""


def as_input(model, x: torch.Tensor) -> torch.Tensor:
    """``x`` in the dtype of ``model``'s weights: the tensor itself for float32 weights (also under
    autocast); cast for pure float16 / bfloat16 weights (``precision.weights``), differentiably."""
    dtype = getattr(model, "dtype", None)  # diffusers' ModelMixin
    if dtype is None or x.dtype == dtype or not x.is_floating_point():
        return x
    return x.to(dtype)


def cat(conds: Sequence[Condition]) -> Condition:
    """Concatenate conditions of one type and one guidance scale along the batch."""
    first = conds[0]
    for c in conds[1:]:
        if type(c) is not type(first):
            raise TypeError(f"cannot concatenate {type(first).__name__} and {type(c).__name__}")
        if c.guidance != first.guidance:
            raise ValueError(f"cannot concatenate conditions with guidance {first.guidance} and {c.guidance}")
    return first._cat(list(conds)) if len(conds) > 1 else first


@dataclass(frozen=True, eq=False)
class ClassCondition(Condition):
    """Class labels (``LongTensor``, shape ``(B,)``); ``null`` is the unconditional label."""

    labels: torch.Tensor
    null: int | None = None
    guidance: float = 1.0

    @classmethod
    def full(cls, n: int, label: int, null: int | None = None, device=None, guidance: float = 1.0):
        return cls(torch.full((n,), int(label), dtype=torch.long, device=device), null, guidance)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, idx) -> "ClassCondition":
        return replace(self, labels=self.labels[idx])

    def to(self, device) -> "ClassCondition":
        return replace(self, labels=self.labels.to(device))

    def unconditional(self) -> "ClassCondition":
        if self.null is None:
            raise ValueError("guidance needs the null label: build the condition with null=<num_classes>")
        return replace(self, labels=torch.full_like(self.labels, self.null), guidance=1.0)

    def call(self, model, z, t):
        return model(as_input(model, z), t, class_labels=self.labels).sample

    def _cat(self, others):
        return replace(self, labels=torch.cat([o.labels for o in others]))

    def describe(self) -> dict:
        values = sorted({int(v) for v in self.labels.tolist()})
        return {"type": "class", "labels": values, "guidance": self.guidance}


@dataclass(frozen=True, eq=False)
class TextCondition(Condition):
    """Text-encoder hidden states ``(B, L, D)`` and their unconditional / negative counterpart."""

    hidden: torch.Tensor
    uncond_hidden: torch.Tensor | None = None
    guidance: float = 1.0

    def __len__(self) -> int:
        return len(self.hidden)

    def __getitem__(self, idx) -> "TextCondition":
        u = None if self.uncond_hidden is None else self.uncond_hidden[idx]
        return replace(self, hidden=self.hidden[idx], uncond_hidden=u)

    def to(self, device) -> "TextCondition":
        u = None if self.uncond_hidden is None else self.uncond_hidden.to(device)
        return replace(self, hidden=self.hidden.to(device), uncond_hidden=u)

    def unconditional(self) -> "TextCondition":
        if self.uncond_hidden is None:
            raise ValueError("guidance needs an unconditional (or negative) embedding: uncond_hidden is None")
        return replace(self, hidden=self.uncond_hidden, guidance=1.0)

    def call(self, model, z, t):
        return model(as_input(model, z), t, encoder_hidden_states=as_input(model, self.hidden)).sample

    def _cat(self, others):
        if any(o.uncond_hidden is None for o in others) and not all(o.uncond_hidden is None for o in others):
            raise ValueError("cannot concatenate text conditions with and without unconditional embeddings")
        u = None if others[0].uncond_hidden is None else torch.cat([o.uncond_hidden for o in others])
        return replace(self, hidden=torch.cat([o.hidden for o in others]), uncond_hidden=u)

    def describe(self) -> dict:
        return {"type": "text", "shape": list(self.hidden.shape), "guidance": self.guidance}


def class_condition(model, labels: torch.Tensor, guidance: float = 1.0) -> ClassCondition:
    """Labels for ``model`` (a class-conditional ``UNet2DModel``), with its null label for guidance."""
    from pecker.diffusion.unet import null_label

    return ClassCondition(labels, null_label(model), float(guidance))
