"""Resumable run folders: the one implementation of checkpoints, resume, prune and the per-step log
shared by every trainer (the teacher, the unlearning loop and the baselines).

Layout under a run folder ``OUT``::

    ckpt/step0000500/state.safetensors + .json   resumable state (the sidecar is written last, so a
                                                 state is complete exactly when its sidecar exists)
    ckpt/step0000500/<name>.safetensors + .json  other files of this checkpoint (e.g. generator_ema)
    ckpt/log.csv                                 running log, flushed per row (survives a killed job)
    log.csv                                      the final log, copied when the run finishes

Every state records the config hash it was written under (:func:`pecker.workflow.stage_hash`) and,
where the trainer asks, identities of its inputs (e.g. the teacher's sha256). A state written under
anything else is refused with :class:`ResumeRefused`, one exception type with one message shape,
and nothing is overwritten. Only :mod:`pecker.io` is imported: no import cycle with the trainers.
"""

from __future__ import annotations

import csv
import logging
import shutil
from pathlib import Path
from typing import Iterable

from pecker import io

log = logging.getLogger("pecker.runs")

STATE = "state"


class ResumeRefused(RuntimeError):
    """A resumable state exists but was written under another config or input."""


class NonFiniteState(FloatingPointError):
    """A trainer's state became NaN or inf; nothing is saved from it."""


def nonfinite(tensors: dict) -> list[str]:
    """Names of the floating-point tensors holding NaN or inf."""
    import torch

    return [k for k, v in tensors.items() if torch.is_floating_point(v) and not bool(torch.isfinite(v).all())]


def seed_all(seed: int) -> None:
    """Seed the global RNGs a run may touch (torch for dropout, numpy, python); the runs' own draws
    come from their explicit generators."""
    import random

    import numpy as np
    import torch

    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def step_name(step: int) -> str:
    return f"step{int(step):07d}"


class RunFolder:
    """One run folder: ``out_dir`` with its ``ckpt/`` subfolder.

    ``config_hash`` is the stage hash the run is written under; ``what`` names the run in messages
    (e.g. ``"unlearn pecker seed 0"``); ``keep`` bounds the number of resumable states kept (None:
    all; other files of a checkpoint are always kept); ``hint`` says which config key to change when
    the run diverges.
    """

    def __init__(self, out_dir: str | Path, config_hash: str, what: str, keep: int | None = None, hint: str = ""):
        self.hint = hint  # what to change when the run diverges (named in NonFiniteState)
        self.out_dir = Path(out_dir)
        self.ckpt_dir = self.out_dir / "ckpt"
        self.config_hash = config_hash
        self.what = what
        self.keep = keep

    def step_dir(self, step: int) -> Path:
        return self.ckpt_dir / step_name(step)

    def latest_state(self) -> Path | None:
        """Prefix of the newest complete resumable state, or None."""
        sidecars = sorted(self.ckpt_dir.glob(f"step*/{STATE}.json"))
        return sidecars[-1].with_suffix("") if sidecars else None

    def resume(self, max_step: int, expect: dict | None = None, device: str = "cpu"):
        """``(tensors, sidecar, prefix)`` of the newest state, or None when there is none.

        Raises :class:`ResumeRefused` when the state was written under another config hash, when
        one of ``expect``'s entries (e.g. ``{"teacher_sha256": ...}``) differs from what the state
        records, or when the state lies beyond ``max_step``. A state whose tensors fail their checksum
        or hold non-finite values, or whose sidecar fails its digest, is skipped for the one before it
        (with a warning). Temp files of interrupted writes are removed first.
        """
        for tmp in io.clean_temp_files(self.out_dir):  # leftovers of writes killed mid-way
            log.info("%s: removed %s (an interrupted write)", self.what, tmp)
        sidecars = sorted(self.ckpt_dir.glob(f"step*/{STATE}.json"), reverse=True)
        for side in sidecars:  # newest first; an unreadable or non-finite state falls back to the one before
            prev = side.with_suffix("")
            try:
                meta = io.read_sidecar(side)
            except io.IntegrityError as err:
                log.warning("%s: skipping %s (%s); trying the state before it", self.what, side, err)
                continue
            self._check_identity(prev, meta, max_step, expect)
            try:
                tensors, meta = io.load_checkpoint(prev, device=device)
            except (io.IntegrityError, OSError, ValueError) as err:
                log.warning("%s: skipping %s (%s); trying the state before it", self.what, prev, err)
                continue
            bad = nonfinite(tensors)
            if bad:
                log.warning("%s: skipping %s (non-finite values in %s); trying the state before it", self.what,
                            prev, ", ".join(bad[:3]))
                continue
            log.info("%s: resumed from %s at step %d", self.what, prev, meta["step"])
            return tensors, meta, prev
        if sidecars:
            log.warning("%s: no valid state among %d in %s; starting afresh", self.what, len(sidecars), self.ckpt_dir)
        return None

    def _check_identity(self, prev: Path, meta: dict, max_step: int, expect: dict | None) -> None:
        found = {"config hash": meta.get("config_hash")}
        wanted = {"config hash": self.config_hash}
        for key, value in (expect or {}).items():
            found[key], wanted[key] = meta.get(key), value
        diff = [k for k in wanted if found[k] != wanted[k]]
        if diff:
            what = "; ".join(f"{k} {found[k]} in the state, {wanted[k]} now" for k in diff)
            self.refuse(prev, f"it was written under another configuration ({what})")
        if meta.get("step", 0) > max_step:
            self.refuse(prev, f"it is at step {meta['step']}, beyond the configured {max_step} steps")

    def begin(self, trainer, max_step: int, fields: Iterable[str], expect: dict | None = None):
        """Resume ``trainer`` (``.load_state(tensors, sidecar)``, ``.step``) from the newest state when
        there is one, then open the running log. Returns ``(log, wall_clock_before, resumed_from)``:
        the training wall-clock recorded by the state (0 for a fresh run) and its path (or None)."""
        resumed = self.resume(max_step, expect=expect)
        wall, prev = 0.0, None
        if resumed is not None:
            tensors, meta, path = resumed
            trainer.load_state(tensors, meta)
            wall, prev = meta.get("wall_clock_s", 0.0), str(path)
        csv_log = self.open_log(fields, trainer.step)
        if trainer.step and csv_log.rows != trainer.step:
            log.warning("%s: log.csv holds %d rows for %d steps (rows of an earlier attempt were lost)", self.what,
                        csv_log.rows, trainer.step)
        return csv_log, wall, prev

    def cached(self, name: str, compute, expect: dict | None = None, device: str = "cpu") -> tuple[dict, dict]:
        """``(tensors, sidecar)`` a run computes once before its loop (SA's replay and Fisher, SalUn's
        mask), kept as ``ckpt/<name>`` so a resumed run reloads instead of recomputing.

        ``compute()`` returns ``(tensors, meta)``; the file records the config hash and ``expect``
        and is refused (:class:`ResumeRefused`) when they differ."""
        prefix = self.ckpt_dir / name
        if prefix.with_suffix(".json").is_file():
            meta = io.read_sidecar(prefix.with_suffix(".json"))
            wanted = {"config_hash": self.config_hash, **(expect or {})}
            diff = [k for k in wanted if meta.get(k) != wanted[k]]
            if diff:
                self.refuse(prefix, "it was written under another configuration ("
                            + "; ".join(f"{k} {meta.get(k)} in the file, {wanted[k]} now" for k in diff) + ")")
            tensors, meta = io.load_checkpoint(prefix, device=device)
            log.info("%s: reloaded %s", self.what, prefix)
            return tensors, meta
        tensors, meta = compute()
        io.save_checkpoint(prefix, tensors, {**meta, **(expect or {}), "config_hash": self.config_hash})
        return tensors, io.read_sidecar(prefix.with_suffix(".json"))

    def refuse(self, prev: Path, why: str):
        raise ResumeRefused(
            f"{self.what}: refusing to resume from {prev}.json: {why}. Restore that configuration, or move "
            f"{self.ckpt_dir} away to start afresh (nothing was overwritten)."
        )

    def save_state(self, step: int, tensors: dict, meta: dict) -> Path:
        """Write the resumable state of ``step`` (atomically, sidecar last), then prune old ones.

        Raises :class:`NonFiniteState` (and writes nothing) when a tensor holds NaN or inf."""
        self.check_finite(step, tensors)
        prefix = self.step_dir(step) / STATE
        io.save_checkpoint(prefix, tensors, {**meta, "step": step, "config_hash": self.config_hash})
        self.prune()
        return prefix

    def check_finite(self, step: int, tensors: dict) -> None:
        """Raise :class:`NonFiniteState` naming the step, the tensors and :attr:`hint` when a tensor
        holds NaN or inf (call it before writing any file of a checkpoint)."""
        bad = nonfinite(tensors)
        if bad:
            raise NonFiniteState(
                f"{self.what}: non-finite values at step {step} in {', '.join(bad[:3])}"
                f"{f' and {len(bad) - 3} more' if len(bad) > 3 else ''}; no state was written for this step"
                f"{f' ({self.hint})' if self.hint else ''}")

    def prune(self) -> None:
        if self.keep is None:
            return
        for side in sorted(self.ckpt_dir.glob(f"step*/{STATE}.json"))[:-self.keep]:
            side.unlink(missing_ok=True)  # sidecar first: a half-pruned state is never "complete"
            side.with_suffix(".safetensors").unlink(missing_ok=True)

    # -- the per-step log ------------------------------------------------------------------------
    def open_log(self, fields: Iterable[str], upto_step: int) -> "CsvLog":
        """The running log, holding the rows of earlier attempts up to the resumed step."""
        path = self.ckpt_dir / "log.csv"
        return CsvLog(path, list(fields), read_log(path, upto_step))

    def finish_log(self) -> Path:
        """Copy the running log to ``OUT/log.csv`` (atomically)."""
        dst = self.out_dir / "log.csv"
        with io.atomic_path(dst) as tmp:
            shutil.copyfile(self.ckpt_dir / "log.csv", tmp)
        return dst


def drive(train_step, start: int, total: int, steps: int, csv_log: "CsvLog", *, log_every: int,
          checkpoint_every: int, on_log, on_checkpoint, desc: str) -> int:
    """The step loop every resumable trainer shares: ``train_step()`` (returns the log row, with its
    ``step``) from ``start`` until ``total``, each row written to ``csv_log``; ``on_log(row)`` (returns a
    progress-bar note) every ``log_every`` steps and at the end, ``on_checkpoint(step)`` every
    ``checkpoint_every`` steps and at the run's last step ``steps``. Closes the log; returns the step
    reached (``total < steps`` stops early without the final checkpoint, e.g. to test resumption)."""
    from tqdm import tqdm

    step = start
    bar = tqdm(total=total, initial=min(start, total), desc=desc, unit="it", mininterval=5, dynamic_ncols=True)
    try:
        while step < total:
            row = train_step()
            csv_log.write(row)
            bar.update(1)
            step = row["step"]
            if step % log_every == 0 or step == total:
                bar.set_postfix_str(on_log(row))
            if step % checkpoint_every == 0 or step == steps:
                on_checkpoint(step)
    finally:
        bar.close()
        csv_log.close()
    return step


def checkpoints(out_dir: str | Path, name: str) -> list[tuple[int, Path]]:
    """``(step, prefix)`` of every ``OUT/ckpt/stepN/<name>`` file (e.g. ``generator_ema``), by step."""
    return [(int(side.parent.name[4:]), side.with_suffix(""))
            for side in sorted((Path(out_dir) / "ckpt").glob(f"step*/{name}.json"))]


def read_log(path: Path, upto: int) -> list[dict]:
    """Complete rows with strictly increasing steps ``<= upto`` (later or torn rows are dropped)."""
    if not path.is_file():
        return []
    with path.open(newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if None not in r.values() and None not in r]
    out, last = [], 0
    for r in rows:
        try:
            st = int(r["step"])
        except (TypeError, ValueError):
            continue
        if last < st <= upto:
            out.append(r)
            last = st
    return out


class CsvLog:
    """Per-step CSV rows with fixed field names, flushed as written; rewritten atomically on open."""

    def __init__(self, path: Path, fields: list[str], rows: list[dict]):
        self.path, self.fields, self.rows = path, fields, len(rows)
        with io.atomic_path(path) as tmp, tmp.open("w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=fields)
            w.writeheader()
            w.writerows(rows)
        self.fh = path.open("a", newline="")
        self.writer = csv.DictWriter(self.fh, fieldnames=fields)

    def write(self, row: dict) -> None:
        self.writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
        self.fh.flush()
        self.rows += 1

    def close(self) -> None:
        self.fh.close()

    def __enter__(self) -> "CsvLog":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
