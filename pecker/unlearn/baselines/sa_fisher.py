"""SA's released Stable Diffusion Fisher as an input of the SA row, read without running code from it.

The Selective Amnesia authors publish the diagonal Fisher of SD v1.4 they computed over their 5,000
replay prompts (``full_fisher_dict.pkl`` of ``ajrheng/selective-amnesia`` on the Hugging Face hub):
``pickle.dump`` of a dict from the latent-diffusion parameter names of ``model.named_parameters()``
(``diffusion_model.input_blocks.1.1.proj_in.weight``, ...) to float tensors of those parameters'
shapes, each ``mean_i (sum_t grad_i,t)^2`` under the latent-diffusion loss (the mean over the
latent's elements): the same quantity as :func:`pecker.unlearn.baselines.sa.fisher_diagonal` with
``loss_reduction: mean`` over all 1,000 timesteps (docs/method.md section 5).

``pecker assets convert-fisher`` turns it, once and in its own step, into a safetensors file in the
diffusers names of the teacher it will be used with:

1. the file's full sha256 is checked first and the file is read through the handle that was hashed
   (:func:`pecker.io.open_verified`);
2. :class:`TensorDictUnpickler` accepts only dicts and torch's tensor rebuilders (storages through
   ``torch.load(..., weights_only=True)``); every other global is refused, so the file cannot run
   anything;
3. the names are mapped by diffusers' own converter of latent-diffusion UNet checkpoints
   (``convert_ldm_unet_checkpoint``) under the teacher's UNet config, then checked against the
   teacher's parameters, every name and shape (:func:`check_layout`); the result is saved with a
   sidecar recording the source file, its sha256 and the teacher it was mapped to.

:func:`load_fisher` gives the tensors in a model's ``named_parameters`` order for the SA loss.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from pecker import io
from pecker.diffusion.pickled import TENSOR_GLOBALS

LDM_PREFIX = "model.diffusion_model."


class TensorDictUnpickler(io.AllowlistUnpickler):
    """Rebuilds dicts of tensors and nothing else."""

    allowed = TENSOR_GLOBALS
    refusal = "a released Fisher may only hold tensors in a dict"


def read_released_fisher(path: str | Path, expected_sha256: str) -> dict[str, torch.Tensor]:
    """The verified file's ``{latent-diffusion name: float32 tensor}``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"released Fisher not found: {path}")
    with io.open_verified(path, expected_sha256, "not the published file; nothing was unpickled") as fh:
        obj = TensorDictUnpickler(fh).load()
    if not isinstance(obj, dict) or not obj:
        raise ValueError(f"{path.name}: expected a non-empty dict of parameter name -> tensor, got {type(obj).__name__}")
    bad = [k for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise ValueError(f"{path.name}: {len(bad)} entries are not name -> tensor (first: {bad[0]!r})")
    return {k: v.detach().float() for k, v in obj.items()}


def ldm_to_diffusers(fisher: dict[str, torch.Tensor], unet_config: dict) -> dict[str, torch.Tensor]:
    """Rename latent-diffusion UNet parameters (``diffusion_model.*`` as ``model.named_parameters()``
    gives them, or a checkpoint's ``model.diffusion_model.*``) to diffusers' ``UNet2DConditionModel``
    names with diffusers' converter."""
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    ckpt = {}
    for k, v in fisher.items():
        if k.startswith(LDM_PREFIX):
            ckpt[k] = v
        elif k.startswith("diffusion_model."):
            ckpt["model." + k] = v
        else:
            raise ValueError(f"parameter {k!r} is not a latent-diffusion UNet name (diffusion_model.*)")
    return convert_ldm_unet_checkpoint(ckpt, dict(unet_config))


def check_layout(fisher: dict[str, torch.Tensor], shapes: dict[str, tuple[int, ...]], what: str) -> dict[str, torch.Tensor]:
    """``fisher`` with exactly the names of ``shapes`` (the model's parameters) and their shapes; a
    tensor with the parameter's elements in another layout (a 1x1 convolution stored as a linear
    weight) is reshaped. Raises ``ValueError`` naming what is missing, extra or of the wrong size."""
    missing = sorted(set(shapes) - set(fisher))
    extra = sorted(set(fisher) - set(shapes))
    if missing or extra:
        raise ValueError(f"{what}: {len(missing)} parameters of the teacher have no Fisher (first: "
                         f"{missing[:3]}), {len(extra)} Fisher entries match no parameter (first: {extra[:3]})")
    out = {}
    for name, shape in shapes.items():
        v = fisher[name]
        if tuple(v.shape) != tuple(shape):
            if v.numel() != math.prod(shape):
                raise ValueError(f"{what}: {name} has shape {tuple(v.shape)}, the teacher's parameter {tuple(shape)}")
            v = v.reshape(shape)
        out[name] = v.contiguous()
    return out


def teacher_shapes(prefix: str | Path) -> tuple[dict[str, tuple[int, ...]], dict]:
    """Trainable parameter shapes and sidecar of a saved UNet, read from the safetensors header (weights
    not loaded, checksum verified; buffers left out: the Fisher covers what SA trains)."""
    from safetensors import safe_open

    prefix = Path(prefix)
    meta = io.read_sidecar(prefix.with_suffix(".json"))
    st = prefix.with_suffix(".safetensors")
    io.verify_checksum(st, meta.get("sha256", ""))
    with safe_open(str(st), framework="pt") as fh:
        shapes = {k: tuple(fh.get_slice(k).get_shape()) for k in fh.keys()}
    if "unet_config" not in meta:
        raise ValueError(f"{prefix}.json: not a diffusers UNet (no unet_config): SA's released Fisher is for Stable Diffusion")
    params = _parameter_names(meta)
    return {k: v for k, v in shapes.items() if k in params}, meta


def convert_released_fisher(path: str | Path, expected_sha256: str, teacher_prefix: str | Path,
                            out_prefix: str | Path) -> Path:
    """Verify and read the released pickle, map it to the teacher's diffusers names, check every name
    and shape against the teacher's parameters, save ``out_prefix``.safetensors + sidecar."""
    shapes, tmeta = teacher_shapes(teacher_prefix)
    raw = read_released_fisher(path, expected_sha256)
    mapped = ldm_to_diffusers(raw, tmeta["unet_config"])
    fisher = check_layout(mapped, shapes, f"{Path(path).name} mapped to {Path(teacher_prefix).name}")
    total = sum(float(v.sum(dtype=torch.float64)) for v in fisher.values())
    n = sum(v.numel() for v in fisher.values())
    meta = {"kind": "sa_fisher", "origin": {"file": Path(path).name, "sha256": str(expected_sha256).lower(),
                                            "n_tensors": len(raw), "names": "latent-diffusion, mapped by diffusers"},
            "teacher": {"file": Path(teacher_prefix).name, "sha256": tmeta.get("sha256")},
            "n_tensors": len(fisher), "n_elements": n, "mean": total / n}
    return io.save_checkpoint(out_prefix, fisher, meta)


def _parameter_names(tmeta: dict) -> set[str]:
    """The trainable parameter names of the teacher's architecture (a meta-device build: no memory)."""
    from diffusers import UNet2DConditionModel

    cfg = {k: (tuple(v) if isinstance(v, list) else v) for k, v in tmeta["unet_config"].items() if not k.startswith("_")}
    with torch.device("meta"):
        model = UNet2DConditionModel.from_config(cfg)
    return {n for n, _ in model.named_parameters()}


def load_fisher(prefix: str | Path, model: torch.nn.Module, device) -> tuple[list[torch.Tensor], dict]:
    """A converted Fisher (verified) as one tensor per parameter of ``model`` in ``named_parameters``
    order, and its sidecar; ``ValueError`` when it does not fit the model."""
    tensors, meta = io.load_checkpoint(prefix, device=device)
    if meta.get("kind") != "sa_fisher":
        raise ValueError(f"{prefix}.json: not a converted SA Fisher (kind {meta.get('kind')!r}; pecker assets convert-fisher)")
    shapes = {n: tuple(p.shape) for n, p in model.named_parameters()}
    fisher = check_layout(tensors, shapes, f"{Path(prefix).name} against the SA run's teacher")
    return [fisher[n] for n in shapes], meta
