"""Captions of the embedded text-to-image teacher's training set (docs/method.md section 1).

Each training image of class ``y`` gets, per step, a caption drawn uniformly from the captions of
its class (:func:`pecker.text.prompts.captions_for`). With probability ``text.attribute_fraction``
the image is *inverted* (``x -> -x`` in [-1, 1]: a white background, the nudity analogue) and its
caption carries an attribute keyword as prefix or suffix; with probability ``teacher.label_dropout``
the caption is the empty prompt (classifier-free guidance). The caption set is finite, so every
caption is encoded once (:class:`pecker.text.stack.PromptEncoder`) and a step only indexes a table.

:class:`CaptionConditions` is the text counterpart of the class teacher's label dropout
(:class:`pecker.diffusion.train.LabelConditions`): the teacher trainer asks it for each batch's model
input and condition.
"""

from __future__ import annotations

from pathlib import Path

import torch

from pecker.diffusion.conditioning import TextCondition


class CaptionConditions:
    """Per-sample captions (and inversion) for a text-conditional teacher; see the module docstring.

    ``table``: ``(len(captions), L, D)`` embeddings of ``captions`` (which include "")."""

    def __init__(self, spec, captions: list[str], table: torch.Tensor, num_classes: int, dropout: float,
                 attribute_fraction: float, latents=None, device="cpu"):
        from pecker.text.prompts import captions_for

        index = {c: i for i, c in enumerate(captions)}
        groups = [[[index[c] for c in captions_for(spec, y, attr)] for attr in (False, True)] for y in range(num_classes)]
        width = max(len(g) for per in groups for g in per)
        self.choices = torch.zeros((num_classes, 2, width), dtype=torch.long)
        self.counts = torch.zeros((num_classes, 2), dtype=torch.long)
        for y, per in enumerate(groups):
            for a, g in enumerate(per):
                self.choices[y, a, :len(g)] = torch.tensor(g)
                self.counts[y, a] = len(g)
        self.empty = index[""]
        self.table = table.to(device)
        self.dropout, self.attribute_fraction = float(dropout), float(attribute_fraction)
        self.latents = latents  # images in [-1, 1] -> UNet input (the VAE); None: identity
        self.n_captions = len(captions)

    def draw(self, x: torch.Tensor, y: torch.Tensor, gen: torch.Generator):
        n = len(y)
        attr = torch.rand(n, generator=gen) < self.attribute_fraction
        pick = torch.rand(n, generator=gen)
        drop = torch.rand(n, generator=gen) < self.dropout
        a = attr.long()
        idx = (pick * self.counts[y, a]).long().clamp_max(self.counts[y, a] - 1)
        cap = self.choices[y, a, idx]
        cap[drop] = self.empty
        sign = torch.where(attr, -1.0, 1.0).view(-1, 1, 1, 1).to(x.device, x.dtype)
        x = x * sign
        if self.latents is not None:
            x = self.latents(x)
        return x, TextCondition(self.table[cap.to(self.table.device)])

    def describe(self) -> dict:
        return {"conditioning": "text", "caption_dropout": self.dropout, "attribute_fraction": self.attribute_fraction,
                "attribute": "inverted image, keyword in the caption", "n_captions": self.n_captions}


def caption_conditions(ds_cfg: dict, unet, ddpm, device="cpu") -> tuple[CaptionConditions, dict]:
    """The teacher's caption draw for a text dataset (``text`` section), with the encoder's record."""
    from pecker.text.prompts import all_captions, load_caption_spec
    from pecker.text.stack import PromptEncoder, build_stack

    tcfg = ds_cfg["text"]
    spec = load_caption_spec(tcfg["captions"])
    stack = build_stack(tcfg, ds_cfg["data"]).to(device)
    captions = all_captions(spec)
    check_caption_lengths(stack.tokenizer, captions, tcfg["captions"])
    enc = PromptEncoder(stack, unet, ddpm, device)
    table = enc.encode(captions)
    frac = tcfg.get("attribute_fraction")
    frac = spec.attribute_fraction if frac is None else frac
    cond = CaptionConditions(spec, captions, table, ds_cfg["data"].get("num_classes", 10),
                             ds_cfg["teacher"]["label_dropout"], frac, stack.latents_from_images, device)
    return cond, {**stack.describe(), "captions_file": str(tcfg["captions"]), "captions_sha256": enc.fingerprint(captions)}


def check_caption_lengths(tokenizer, captions: list[str], source) -> None:
    """Refuse training captions longer than the tokenizer's ``model_max_length`` (``text.max_length``):
    the pipeline would silently cut them, and a suffixed attribute keyword is what gets cut."""
    from pecker.config import ConfigError

    limit = int(tokenizer.model_max_length)
    lengths = [len(ids) for ids in tokenizer(list(captions), truncation=False)["input_ids"]]
    worst = max(range(len(lengths)), key=lengths.__getitem__)
    if lengths[worst] > limit:
        n = sum(n > limit for n in lengths)
        raise ConfigError(f"config key 'text.max_length': {limit} tokens, but {n} captions of {source} are longer, "
                          f"up to {lengths[worst]} ({captions[worst]!r}); raise it to at least {lengths[worst]}")
