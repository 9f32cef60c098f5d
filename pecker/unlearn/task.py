"""What is forgotten, what covers it and what is retained, as conditions (docs/method.md section 1).

A task draws, for each iteration of the unlearning loop, the retain conditions ``c_r``, the forget
conditions ``c_f`` and the matching cover / override conditions ``c_o`` (the teacher's condition on
the forget branch). :class:`ClassForgetting` is class forgetting (forget class ``c_f``, cover class
``c_o``, retain the other classes); concept forgetting plugs in as another task drawing prompts and
their embeddings (:class:`PromptForgetting`), with no change to the loop or the losses.

The conditions a task returns carry the guidance of the score networks (teacher and fake score);
the one-step generator is always called unguided (:class:`~pecker.unlearn.generator.OneStepGenerator`).
"""

from __future__ import annotations

import torch

from pecker.config import ConfigError
from pecker.diffusion.conditioning import ClassCondition, TextCondition


class ClassForgetting:
    """Forget ``forget_class``, cover it with ``cover_class``, retain every other class of
    ``num_classes``; ``null`` is the network's unconditional label. ``retain_all`` draws the retain
    labels over all classes, ``forget_class`` included (stage 1 of SFD-Two-Stage, a plain SiD
    distillation when both forget coefficients are 0)."""

    def __init__(self, num_classes: int, forget_class: int, cover_class: int, null: int | None = None,
                 device: torch.device | str = "cpu", where: str = "unlearn", retain_all: bool = False):
        for key, value in (("forget_class", forget_class), ("cover_class", cover_class)):
            if not 0 <= value < num_classes:
                raise ConfigError(f"config key '{where}.{key}': {value} is not in [0, {num_classes})")
        if forget_class == cover_class:
            raise ConfigError(f"config key '{where}.cover_class': must differ from forget_class ({forget_class})")
        self.forget_class, self.cover_class, self.null = int(forget_class), int(cover_class), null
        self.device = torch.device(device)
        self.retain_all = bool(retain_all)
        self.retain_classes = torch.tensor([c for c in range(num_classes) if retain_all or c != forget_class],
                                           dtype=torch.long)

    def forget(self, n: int) -> ClassCondition:
        return ClassCondition.full(n, self.forget_class, self.null, self.device)

    def cover(self, n: int) -> ClassCondition:
        return ClassCondition.full(n, self.cover_class, self.null, self.device)

    def draw(self, rng: torch.Generator, n_retain: int, n_forget: int):
        """``(c_r, c_f, c_o)``: retain labels uniform over the retained classes (from ``rng``, on the
        CPU), the forget labels and the cover labels."""
        idx = torch.randint(0, len(self.retain_classes), (n_retain,), generator=rng)
        c_r = ClassCondition(self.retain_classes[idx].to(self.device), self.null)
        return c_r, self.forget(n_forget), self.cover(n_forget)

    def fake_score_conditions(self, c_r, c_f, rng):
        """The psi step's conditions: unchanged (label dropout belongs to the teacher's training)."""
        return c_r, c_f

    def describe(self) -> dict:
        """What the run forgets, recorded in every generator sidecar (checked by the evaluation)."""
        out = {"forget": {"type": "class", "label": self.forget_class},
               "cover": {"type": "class", "label": self.cover_class}}
        if self.retain_all:
            out["retain"] = "all"
        return out


class PromptForgetting:
    """Concept forgetting over precomputed text-encoder embeddings (``(N, L, D)`` each).

    ``retain``: embeddings of the retain prompts; ``forget``: of the forget prompts; ``override``:
    of each forget prompt with the concept replaced (row ``i`` overrides forget prompt ``i``);
    ``uncond``: the empty prompt ``(L, D)``; ``negative``: optional negative prompt ``(L, D)`` that
    replaces the empty prompt on the forget branch; ``guidance``: the score networks' guidance
    scale. ``names`` (optional) are the prompts, recorded by :meth:`describe`. ``retain_negatives``
    (optional, ``(K, L, D)``): each retain sample's guidance uses one of these, drawn at random, in place
    of the empty prompt (our reading of SiD-LSG-Neg, ``retain_negative: random_keyword``).
    """

    def __init__(self, retain: torch.Tensor, forget: torch.Tensor, override: torch.Tensor, uncond: torch.Tensor,
                 negative: torch.Tensor | None = None, guidance: float = 1.0, names: dict | None = None,
                 device: torch.device | str = "cpu", prompt_dropout: float = 0.0,
                 retain_negatives: torch.Tensor | None = None):
        if forget.shape != override.shape:
            raise ValueError(f"forget {tuple(forget.shape)} and override {tuple(override.shape)} embeddings differ in shape")
        self.device = torch.device(device)
        self.retain, self.forget_emb, self.override = (e.to(self.device) for e in (retain, forget, override))
        self.uncond = uncond.to(self.device)
        self.negative = self.uncond if negative is None else negative.to(self.device)
        self.guidance, self.names = float(guidance), names or {}
        self.prompt_dropout = float(prompt_dropout)
        self.retain_negatives = None if retain_negatives is None else retain_negatives.to(self.device)

    def _cond(self, table: torch.Tensor, idx: torch.Tensor, uncond: torch.Tensor) -> TextCondition:
        idx = idx.to(self.device)
        return TextCondition(table[idx], uncond.expand(len(idx), *uncond.shape), self.guidance)

    def forget(self, n: int) -> TextCondition:
        """The forget prompts in order, cycled to ``n`` (no randomness: e.g. the saliency batch)."""
        return self._cond(self.forget_emb, torch.arange(n) % len(self.forget_emb), self.negative)

    def draw(self, rng: torch.Generator, n_retain: int, n_forget: int):
        """``(c_r, c_f, c_o)``: retain prompts uniformly, forget prompts uniformly and their overrides."""
        r = torch.randint(0, len(self.retain), (n_retain,), generator=rng)
        f = torch.randint(0, len(self.forget_emb), (n_forget,), generator=rng)
        c_r = self._cond(self.retain, r, self.uncond)
        if self.retain_negatives is not None:  # drawn after r and f: without the option nothing changes
            k = torch.randint(0, len(self.retain_negatives), (n_retain,), generator=rng).to(self.device)
            c_r = TextCondition(c_r.hidden, self.retain_negatives[k], self.guidance)
        return c_r, self._cond(self.forget_emb, f, self.negative), self._cond(self.override, f, self.negative)

    def fake_score_conditions(self, c_r: TextCondition, c_f: TextCondition, rng: torch.Generator):
        """The psi step's conditions: each prompt replaced by the empty prompt with probability
        ``prompt_dropout`` (the official SFD code's 0.1; draws from ``rng`` only when it is > 0)."""
        if self.prompt_dropout <= 0:
            return c_r, c_f
        out = []
        for c in (c_r, c_f):
            drop = (torch.rand(len(c), generator=rng) < self.prompt_dropout).to(self.device)
            hidden = torch.where(drop.view(-1, 1, 1), self.uncond.expand_as(c.hidden), c.hidden)
            out.append(TextCondition(hidden, c.uncond_hidden, c.guidance))
        return out[0], out[1]

    def describe(self) -> dict:
        return {"forget": {"type": "text", "n_prompts": len(self.forget_emb), **self.names},
                "cover": {"type": "text", "n_prompts": len(self.override)},
                "guidance": self.guidance, "prompt_dropout": self.prompt_dropout}


def concept_prompts(task_cfg: dict, text_cfg: dict, where: str) -> dict:
    """The prompt sets of a concept-forgetting task (``unlearn.tasks.<name>``; docs/method.md section 1):
    ``forget``, ``override`` (aligned), ``retain``, and ``negative`` (the prompt that replaces "" on the
    forget branch, or None).

    - ``type: celebrity``: ``prompts`` (a CSV of forget prompts, column ``prompt``), each overridden by
      replacing ``concept`` with ``override`` (case-insensitive).
    - ``type: nudity``: ``prompts`` (a YAML of subjects, the negative prompt and, for Stable Diffusion, the
      keywords): every subject with each keyword as prefix or suffix, overridden by the bare subject.
    Retain prompts: the CSV ``retain`` when set, else the caption spec's captions without keyword of
    every class except ``target`` (celebrity) or of all classes (nudity).
    """
    from pathlib import Path

    from pecker.text import prompts as P

    kind = task_cfg["type"]
    spec = P.load_caption_spec(text_cfg["captions"]) if text_cfg.get("captions") else None
    negative = None
    if kind == "celebrity":
        forget = P.read_prompt_csv(task_cfg["prompts"])
        override = [P.override_prompt(p, task_cfg["concept"], task_cfg["override"]) for p in forget]
        exclude = (task_cfg["target"],) if isinstance(task_cfg.get("target"), int) else ()
    elif kind == "nudity":
        nud = P.read_nudity_set(task_cfg["prompts"])
        if spec is None and not nud.get("keywords"):
            raise ConfigError(f"config key '{where}.prompts': without text.captions the nudity set must list its "
                              "keywords (key 'keywords')")
        forget, override = P.nudity_forget_prompts(spec, nud)
        negative = nud["negative_prompt"] if task_cfg.get("negative_prompt", True) else None
        exclude = ()
    else:
        raise ConfigError(f"config key '{where}.type': unknown task type {kind!r} (celebrity, nudity)")
    if task_cfg.get("retain"):
        retain = P.read_prompt_csv(task_cfg["retain"])
    elif spec is not None:
        retain = P.retain_prompts(spec, exclude_labels=exclude)
    else:
        raise ConfigError(f"config key '{where}.retain': no retain prompt file and no text.captions to draw them from")
    return {"forget": forget, "override": override, "retain": retain, "negative": negative}


def nudity_keywords(task_cfg: dict, text_cfg: dict, where: str) -> list[str]:
    """The keywords of a nudity task: its set's own, else the caption spec's train keywords."""
    from pecker.text import prompts as P

    if task_cfg["type"] != "nudity":
        raise ConfigError(f"config key '{where}': random_keyword draws from a nudity task's keywords; the method's "
                          f"task is of type {task_cfg['type']!r}")
    nud = P.read_nudity_set(task_cfg["prompts"])
    if nud.get("keywords"):
        return list(nud["keywords"])
    return list(P.load_caption_spec(text_cfg["captions"]).keywords_train)


def concept_task(settings: dict, ds_cfg: dict, encoder, device="cpu", where: str = "unlearn") -> "PromptForgetting":
    """The :class:`PromptForgetting` of a method's ``task`` (``unlearn.tasks.<task>``), its prompts
    encoded once by ``encoder`` (:class:`pecker.text.stack.PromptEncoder`)."""
    name = settings.get("task")
    tasks = (ds_cfg.get("unlearn") or {}).get("tasks") or {}
    if name not in tasks:
        raise ConfigError(f"config key '{where}.methods.{settings['method']}.task': {name!r} is not a task of "
                          f"{where}.tasks ({', '.join(sorted(tasks)) or 'none'})")
    sets = concept_prompts(tasks[name], ds_cfg["text"], f"{where}.tasks.{name}")
    emb = {k: encoder.encode(v) for k, v in sets.items() if k in ("forget", "override", "retain")}
    uncond = encoder.encode([""])[0]
    negative = None if sets["negative"] is None else encoder.encode([sets["negative"]])[0]
    retain_negatives = None
    if settings.get("retain_negative", "empty") == "random_keyword":
        keywords = nudity_keywords(tasks[name], ds_cfg["text"], f"{where}.methods.{settings['method']}.retain_negative")
        retain_negatives = encoder.encode(keywords)
    return PromptForgetting(emb["retain"], emb["forget"], emb["override"], uncond, negative,
                            retain_negatives=retain_negatives,
                            guidance=settings.get("guidance", 1.0), prompt_dropout=settings.get("prompt_dropout", 0.0),
                            names={"task": name, "type": tasks[name]["type"], "forget_sha256": encoder.fingerprint(sets["forget"]),
                                   "n_retain": len(sets["retain"]), "negative_prompt": sets["negative"],
                                   **({"retain_negative": "random_keyword"} if retain_negatives is not None else {})},
                            device=device)
