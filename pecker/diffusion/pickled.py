"""Convert a pickled diffusers network (the SiD-LSG one-step generators) to this project's format,
without running any code from the file.

SiD-LSG (``UT-Austin-PML/SiD-LSG``, e.g. ``batch512_cfg4.54.54.5_t625_8380_v2.pkl``: the generator the
official SFD code starts from for Stable Diffusion) publishes ``pickle.dump(dict(ema=unet))`` of a
whole diffusers ``UNet2DConditionModel`` object. Loading it the way its authors do (``pickle.load``)
would import and run whatever the file names. Here:

1. the file's full sha256 is checked first, and the file is read through the handle that was hashed
   (:func:`pecker.io.open_verified`);
2. :class:`SkeletonUnpickler` rebuilds it with *inert stand-ins* for every network class: a
   ``diffusers.*`` or ``torch.nn.modules.*`` class becomes a plain record of the attributes the pickle
   stores (``_parameters``, ``_buffers``, ``_modules``, the config in ``_internal_dict``). No
   constructor and no ``__setstate__`` of the real classes runs. Tensors are rebuilt by torch's own
   functions, the storages by ``torch.load(..., weights_only=True)``. Any other global (a function,
   ``os.system``, ``builtins.eval``) is refused with :class:`pickle.UnpicklingError`, so the file
   cannot execute anything;
3. the state dict is read off the skeleton. A fresh ``UNet2DConditionModel`` is built from the
   stored config and the weights are loaded with ``strict=True``. The result is saved as safetensors
   plus a JSON sidecar (:func:`pecker.diffusion.unet.save_unet`) recording the source file, its sha256
   and the pickle key. Nothing in the pipeline reads the pickle again.

``pecker teacher convert-pickled`` runs this as its own step (its own process and rule): the
"isolated conversion" of docs/method.md.
"""

from __future__ import annotations

import io as _io
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch

from pecker import io
from pecker.diffusion.unet import save_unet

NETWORK_PACKAGES = ("diffusers.", "torch.nn.modules.")


def _safe_storage_from_bytes(data: bytes):
    """``torch.storage._load_from_bytes`` without its ``weights_only=False``."""
    return torch.load(_io.BytesIO(data), map_location="cpu", weights_only=True)


# the only functions a pickled network may call: torch's tensor rebuilders and the safe storage loader
ALLOWED_FUNCTIONS = {
    ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): torch._utils._rebuild_parameter,
    ("torch.storage", "_load_from_bytes"): _safe_storage_from_bytes,
}
# the globals a pickle of tensors may name besides those: plain containers
TENSOR_GLOBALS = {**ALLOWED_FUNCTIONS, ("collections", "OrderedDict"): OrderedDict}


class Skeleton:
    """Inert stand-in for a pickled object of a network class: its pickled attributes, nothing else."""

    qualname = "?"

    def __init__(self, *args, **kwargs):  # never called by the unpickler (NEWOBJ uses __new__)
        self.__dict__["_args"] = args

    def __setstate__(self, state):
        if isinstance(state, tuple) and len(state) == 2:  # (dict state, slots state)
            state = {**(state[0] or {}), **(state[1] or {})}
        self.__dict__.update(state or {})


class DictSkeleton(dict):
    """Inert stand-in for a dict subclass of a network package (diffusers' ``FrozenDict``, the config)."""

    qualname = "?"

    def __setstate__(self, state):
        self.__dict__.update(state or {})


class SkeletonUnpickler(io.AllowlistUnpickler):
    """Rebuilds network classes as :class:`Skeleton` records and refuses every other global."""

    allowed = TENSOR_GLOBALS
    refusal = "a pickled network may only name diffusers / torch.nn classes and torch's tensor rebuilders"

    def resolve(self, module: str, name: str):
        if module.startswith(NETWORK_PACKAGES) and name[:1].isupper():
            base = DictSkeleton if name.endswith("Dict") else Skeleton
            return type(name, (base,), {"qualname": f"{module}.{name}"})
        return None


def load_skeleton(fh) -> Any:
    return SkeletonUnpickler(fh).load()


def skeleton_state_dict(root: Skeleton) -> dict[str, torch.Tensor]:
    """The ``state_dict()`` the real module would give: parameters and persistent buffers, dotted names."""
    out: dict[str, torch.Tensor] = {}

    def walk(node, prefix: str) -> None:
        d = node.__dict__
        for name, p in (d.get("_parameters") or {}).items():
            if p is not None:
                out[prefix + name] = p.detach()
        skip = d.get("_non_persistent_buffers_set") or set()
        for name, b in (d.get("_buffers") or {}).items():
            if b is not None and name not in skip:
                out[prefix + name] = b
        for name, child in (d.get("_modules") or {}).items():
            if child is not None:
                walk(child, f"{prefix}{name}.")

    walk(root, "")
    return out


def read_pickled_unet(path: str | Path, expected_sha256: str, key: str | None = "ema") -> tuple[torch.nn.Module, dict]:
    """Verify, skeleton-unpickle and rebuild the ``UNet2DConditionModel`` stored under ``key`` (``None``:
    the pickle is the network itself); returns the network (float32) and a description of the source."""
    from diffusers import UNet2DConditionModel

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"pickled network not found: {path}")
    with io.open_verified(path, expected_sha256, "not the published file; nothing was unpickled") as fh:
        obj = load_skeleton(fh)
    if key is not None:
        if not isinstance(obj, dict) or key not in obj:
            got = sorted(obj) if isinstance(obj, dict) else type(obj).__name__
            raise ValueError(f"{path.name}: expected a dict with key {key!r} (SiD-LSG's dict(ema=unet)), got {got}")
        obj = obj[key]
    if not isinstance(obj, Skeleton) or not obj.qualname.endswith(".UNet2DConditionModel"):
        raise ValueError(f"{path.name}: the pickled object is {getattr(obj, 'qualname', type(obj).__name__)}, "
                         "not a diffusers UNet2DConditionModel")
    config = {k: v for k, v in dict(obj.__dict__.get("_internal_dict") or {}).items() if not k.startswith("_")}
    state = skeleton_state_dict(obj)
    dtypes = sorted({str(t.dtype).removeprefix("torch.") for t in state.values()})
    model = UNet2DConditionModel.from_config(config)
    model.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    desc = {"file": path.name, "sha256": str(expected_sha256).lower(), "key": key, "class": obj.qualname,
            "stored_dtypes": dtypes, "n_tensors": len(state)}
    return model, desc


def convert_pickled_unet(path: str | Path, expected_sha256: str, out_prefix: str | Path, key: str | None = "ema",
                         meta: dict | None = None) -> Path:
    """:func:`read_pickled_unet`, then save as safetensors + sidecar (``origin`` = the source);
    returns the safetensors path."""
    model, origin = read_pickled_unet(path, expected_sha256, key)
    return save_unet(out_prefix, model, {"kind": "converted_unet", "origin": origin, **(meta or {})})
