"""Atomic file output, checksums, and safetensors checkpoints with JSON sidecars.

Nothing here unpickles: weights and training state are safetensors, metadata is JSON.
A checkpoint ``NAME`` is the pair ``NAME.safetensors`` + ``NAME.json``. The sidecar records the
full sha256 of the tensor file and a ``digest``: the sha256 of the sidecar's own canonical JSON
(without that key), which includes the tensor file's hash, so one number covers both files.
:func:`load_checkpoint` verifies both before reading a tensor; an edited sidecar (an architecture
key, ``t_init``) is refused like a flipped bit in the tensors. Every refusal is an
:class:`IntegrityError`: one line naming the file, what did not match and what to do.

Writes go to a temporary file next to the target (``.NAME.tmp-XXXXXXXX``) renamed over it on
success; :func:`clean_temp_files` removes the leftovers of killed writes.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import random
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import numpy as np

if TYPE_CHECKING:  # torch is imported where tensors are handled: Snakemake's parse stays light
    import torch


class IntegrityError(RuntimeError):
    """An artefact is missing, unreadable, or does not match what was recorded for it."""


class ChecksumError(IntegrityError):
    """A file's checksum does not match the expected value."""


FIX = "delete it and rerun the step (Snakemake rule) that writes it"
TEMP_MARK = ".tmp-"
HEX_LENGTH = {"sha256": 64, "md5": 32}


@contextmanager
def atomic_path(path: str | Path, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it over ``path`` only on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(
        dir=path.parent, prefix=f".{path.name}{TEMP_MARK}", suffix=suffix or path.suffix or ".tmp"
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


def clean_temp_files(directory: str | Path) -> list[Path]:
    """Remove what interrupted :func:`atomic_path` writes left under ``directory`` (recursively).

    Call it only where no other process writes (a run folder, under Snakemake's lock)."""
    removed = []
    root = Path(directory)
    if root.is_dir():
        for p in root.rglob(f".*{TEMP_MARK}*"):
            if p.is_file():
                p.unlink(missing_ok=True)
                removed.append(p)
    return removed


def atomic_write_text(path: str | Path, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def read_json(path: str | Path) -> Any:
    with Path(path).open() as fh:
        return json.load(fh)


def canonical_json(obj: Any) -> str:
    """Sorted keys, no spaces: the text every content hash of the project is taken over."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def sha256_stream(fh, chunk: int = 1 << 20) -> str:
    """sha256 of what is left to read in the binary file object ``fh``."""
    h = hashlib.sha256()
    while block := fh.read(chunk):
        h.update(block)
    return h.hexdigest()


def sha256_file(path: str | Path) -> str:
    with Path(path).open("rb") as fh:
        return sha256_stream(fh)


def is_full_hash(value, algo: str = "sha256") -> bool:
    """Whether ``value`` is a whole hex digest of ``algo`` (64 digits for sha256, 32 for md5)."""
    text = str(value or "").lower()
    return len(text) == HEX_LENGTH[algo] and all(c in "0123456789abcdef" for c in text)


def md5_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.md5()
    with Path(path).open("rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def verify_checksum(path: str | Path, expected: str, algo: str = "sha256") -> str:
    """Raise :class:`ChecksumError` unless ``path`` hashes to ``expected``, given in full (no prefix:
    64 hex digits for sha256, 32 for md5)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"file to verify not found: {path}")
    want = str(expected or "").lower()
    if not is_full_hash(want, algo):
        raise ChecksumError(f"{path}: the expected {algo} {expected!r} is not a full {HEX_LENGTH[algo]}-digit hash; "
                            "refusing to load it unverified")
    actual = sha256_file(path) if algo == "sha256" else md5_file(path)
    if actual != want:
        raise ChecksumError(
            f"{algo} of {path} is {actual}, expected {want}: the file is corrupt or not "
            "the one this pipeline was written for; refusing to load it"
        )
    return actual


@contextmanager
def open_verified(path: str | Path, expected_sha256: str, hint: str = "") -> Iterator[Any]:
    """An open binary handle on ``path``, at offset 0, after its full sha256 matched ``expected_sha256``.

    The file is hashed and then read through this one handle, so what the caller reads is what was
    hashed even if the path is replaced meanwhile: the guard in front of every unpickling. Raises
    ``ValueError`` for an expected hash that is not a full 64-digit sha256, ``FileNotFoundError``, and
    :class:`ChecksumError` (nothing read; ``hint`` appended to its one-line message) on a mismatch."""
    path = Path(path)
    expected = str(expected_sha256 or "").strip().lower()
    if not is_full_hash(expected):
        raise ValueError(f"expected sha256 for {path.name} must be the full 64-hex-digit sha256, got {expected_sha256!r}")
    if not path.is_file():
        raise FileNotFoundError(f"file to verify not found: {path}")
    with path.open("rb") as fh:
        actual = sha256_stream(fh)
        if actual != expected:
            raise ChecksumError(f"sha256 of {path} is {actual}, expected {expected}" + (f": {hint}" if hint else ""))
        fh.seek(0)
        yield fh


# ----------------------------------------------------------------------------- sidecars


class AllowlistUnpickler(pickle.Unpickler):
    """An unpickler that resolves only the globals of ``allowed`` (``{(module, name): object}``) or those
    :meth:`resolve` returns, and refuses every other global, so no function named by the file runs.
    Subclasses set ``allowed`` and ``refusal`` (why the rest is refused). Use it only on a file whose
    checksum was verified first (:func:`open_verified`)."""

    allowed: dict = {}
    refusal = "this file may not name it"

    def resolve(self, module: str, name: str):
        """A global outside ``allowed`` that the subclass still accepts, or None."""
        return None

    def find_class(self, module: str, name: str):
        if (module, name) in self.allowed:
            return self.allowed[(module, name)]
        obj = self.resolve(module, name)
        if obj is None:
            raise pickle.UnpicklingError(f"refused global {module}.{name}: {self.refusal}")
        return obj


def _jsonable(meta: dict) -> dict:
    return json.loads(json.dumps(meta, default=str))


def sidecar_digest(meta: dict) -> str:
    """sha256 of a sidecar's canonical JSON without its ``digest`` key."""
    body = {k: v for k, v in _jsonable(meta).items() if k != "digest"}
    return hashlib.sha256(canonical_json(body).encode()).hexdigest()


def write_sidecar(path: str | Path, meta: dict) -> Path:
    """Write a JSON sidecar with its ``digest`` (atomically)."""
    body = _jsonable(meta)
    body["digest"] = sidecar_digest(body)
    return atomic_write_json(path, body)


def read_sidecar(path: str | Path) -> dict:
    """Read a sidecar written by :func:`write_sidecar`; :class:`IntegrityError` unless it parses and its
    ``digest`` matches its content."""
    path = Path(path)
    if not path.is_file():
        raise IntegrityError(f"{path}: not found; rerun the step (Snakemake rule) that writes it")
    try:
        meta = read_json(path)
    except (OSError, ValueError) as err:
        raise IntegrityError(f"{path}: unreadable JSON ({err}); {FIX}") from None
    if not isinstance(meta, dict) or "digest" not in meta:
        raise IntegrityError(f"{path}: no integrity digest (written by an older pecker, or not a sidecar); {FIX}")
    actual = sidecar_digest(meta)
    if actual != meta["digest"]:
        raise IntegrityError(f"{path}: its content does not match its digest (edited or corrupt: digest "
                             f"{meta['digest'][:16]}... recorded, {actual[:16]}... now); {FIX}")
    return meta


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
    write_sidecar(prefix.with_suffix(".json"), sidecar)
    return st_path


def load_checkpoint(prefix: str | Path, device: str | torch.device = "cpu") -> tuple[dict, dict]:
    """Verify the sidecar's digest and the tensor file's full sha256, then load tensors and metadata.

    Raises :class:`IntegrityError` (one line naming the file) for a missing, truncated, edited or
    corrupt file."""
    prefix = Path(prefix)
    if prefix.suffix in (".json", ".safetensors"):
        prefix = prefix.with_suffix("")
    st = prefix.with_suffix(".safetensors")
    meta = read_sidecar(prefix.with_suffix(".json"))
    if not st.is_file():
        raise IntegrityError(f"{st}: not found (its sidecar {prefix.with_suffix('.json')} is there); {FIX}")
    try:
        verify_checksum(st, meta.get("sha256", ""))
    except ChecksumError as err:
        raise ChecksumError(f"{err}; {FIX}") from None
    from safetensors.torch import load_file

    try:
        return load_file(str(st), device=str(device)), meta
    except Exception as err:  # a header safetensors cannot parse (it matched its hash: written corrupt)
        raise IntegrityError(f"{st}: unreadable safetensors ({err}); {FIX}") from None


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
