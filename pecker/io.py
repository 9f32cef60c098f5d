"""Atomic file output, checksums, and safetensors checkpoints with JSON sidecars.

Nothing here unpickles: weights and training state are safetensors, metadata is JSON.
A checkpoint ``NAME`` is the pair ``NAME.safetensors`` + ``NAME.json``; the sidecar records
the sha256 of the tensor file, which :func:`load_checkpoint` verifies before reading it.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import numpy as np

if TYPE_CHECKING:  # torch is imported where tensors are handled: Snakemake's parse stays light
    import torch


class ChecksumError(RuntimeError):
    """A file's checksum does not match the expected value."""


@contextmanager
def atomic_path(path: str | Path, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it over ``path`` only on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(
        dir=path.parent, prefix=f".{path.name}.", suffix=suffix or path.suffix or ".tmp"
    )
    os.close(fd)
    tmp_path = Path(tmp)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp_path, 0o666 & ~umask)  # mkstemp creates 0600; give the usual permissions
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def atomic_write_text(path: str | Path, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def read_json(path: str | Path) -> Any:
    with Path(path).open() as fh:
        return json.load(fh)


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with Path(path).open("rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def md5_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.md5()
    with Path(path).open("rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def verify_checksum(path: str | Path, expected: str, algo: str = "sha256") -> str:
    """Raise :class:`ChecksumError` unless ``path`` hashes to ``expected`` (a prefix is allowed)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"file to verify not found: {path}")
    actual = sha256_file(path) if algo == "sha256" else md5_file(path)
    if not expected or not actual.startswith(expected.lower()):
        raise ChecksumError(
            f"{algo} of {path} is {actual}, expected {expected!r}: the file is corrupt or not "
            "the one this pipeline was written for; refusing to load it"
        )
    return actual


def save_npz(path: str | Path, **arrays: np.ndarray) -> Path:
    with atomic_path(path, suffix=".npz") as tmp:
        np.savez(tmp, **arrays)
    return Path(path)


def load_npz(path: str | Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


# ----------------------------------------------------------------------------- checkpoints


def save_checkpoint(prefix: str | Path, tensors: dict[str, torch.Tensor], meta: dict) -> Path:
    """Write ``prefix.safetensors`` and ``prefix.json`` (sidecar with sha256), both atomically."""
    prefix = Path(prefix)
    st_path = prefix.with_suffix(".safetensors")
    from safetensors.torch import save_file

    flat = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    with atomic_path(st_path, suffix=".safetensors") as tmp:
        save_file(flat, str(tmp))
        digest = sha256_file(tmp)
    sidecar = dict(meta)
    sidecar["file"] = st_path.name
    sidecar["sha256"] = digest
    atomic_write_json(prefix.with_suffix(".json"), sidecar)
    return st_path


def load_checkpoint(prefix: str | Path, device: str | torch.device = "cpu") -> tuple[dict, dict]:
    """Verify the sha256 recorded in the sidecar, then load tensors and metadata."""
    prefix = Path(prefix)
    if prefix.suffix in (".json", ".safetensors"):
        prefix = prefix.with_suffix("")
    side = prefix.with_suffix(".json")
    st = prefix.with_suffix(".safetensors")
    if not side.is_file():
        raise FileNotFoundError(f"checkpoint sidecar not found: {side}")
    meta = read_json(side)
    verify_checksum(st, meta["sha256"])
    from safetensors.torch import load_file

    return load_file(str(st), device=str(device)), meta


def prefixed(prefix: str, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {f"{prefix}.{k}": v for k, v in state.items()}


def unprefixed(prefix: str, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    p = prefix + "."
    return {k[len(p):]: v for k, v in tensors.items() if k.startswith(p)}


def optimizer_to_tensors(opt: torch.optim.Optimizer, prefix: str) -> tuple[dict, dict]:
    """Split an optimizer state dict into tensors (safetensors) and JSON-able metadata."""
    import torch

    sd = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict] = {}
    for idx, st in sd["state"].items():
        for key, val in st.items():
            if torch.is_tensor(val):
                tensors[f"{prefix}.state.{idx}.{key}"] = val
            else:
                scalars.setdefault(str(idx), {})[key] = val
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def optimizer_from_tensors(
    opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict, prefix: str
) -> None:
    state: dict[int, dict] = {}
    p = f"{prefix}.state."
    for k, v in tensors.items():
        if k.startswith(p):
            idx, key = k[len(p):].split(".", 1)
            state.setdefault(int(idx), {})[key] = v
    for idx, extra in meta.get("scalars", {}).items():
        state.setdefault(int(idx), {}).update(extra)
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def rng_to_tensors(generators: dict[str, torch.Generator] | None = None) -> tuple[dict, dict]:
    """Capture torch (CPU and CUDA), numpy and python RNG states, plus named generators."""
    import torch

    tensors = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s
    np_state = np.random.get_state()
    tensors["rng.numpy.keys"] = torch.from_numpy(np_state[1].astype(np.int64))
    for name, gen in (generators or {}).items():
        tensors[f"rng.gen.{name}"] = gen.get_state()
    meta = {
        "numpy": [np_state[0], int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "python": _to_jsonable(random.getstate()),
    }
    return tensors, meta


def rng_from_tensors(
    tensors: dict[str, torch.Tensor], meta: dict, generators: dict[str, torch.Generator] | None = None
) -> None:
    import torch

    torch.set_rng_state(tensors["rng.torch"])
    if torch.cuda.is_available():
        states = [tensors[k] for k in sorted(tensors) if k.startswith("rng.cuda.")]
        if states:
            torch.cuda.set_rng_state_all(states)
    kind, pos, has_gauss, cached = meta["numpy"]
    np.random.set_state((kind, tensors["rng.numpy.keys"].numpy().astype(np.uint32), pos, has_gauss, cached))
    random.setstate(_from_jsonable(meta["python"]))
    for name, gen in (generators or {}).items():
        gen.set_state(tensors[f"rng.gen.{name}"])


def _to_jsonable(obj):
    if isinstance(obj, tuple):
        return {"__tuple__": [_to_jsonable(o) for o in obj]}
    return obj


def _from_jsonable(obj):
    if isinstance(obj, dict) and "__tuple__" in obj:
        return tuple(_from_jsonable(o) for o in obj["__tuple__"])
    if isinstance(obj, list):
        return [_from_jsonable(o) for o in obj]
    return obj
