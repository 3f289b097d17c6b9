"""The metadata sidecar of a checkpoint: ``{checkpoint without .pth.tar}.meta.json``.

A few hundred bytes saying what a checkpoint holds, so that whatever lists checkpoints (the
dashboard's checkpoint rows, ``capcli runs``) need not load a 100 MB file to show one line.
:func:`capcli.store.files.save_checkpoint` writes it after every checkpoint, atomically;
:func:`read_meta` gives None when it is absent (checkpoints from before it existed), torn,
malformed, or older than its checkpoint (a save killed between the two writes): callers then read
the checkpoint itself.

Version 1, every field always present:

=================  ===========================================================================
version            1
stage              "train" or "a2c"
run                the run's name
data               the prepared data set's name (null when unknown)
epoch, step        epochs completed, optimiser steps in all
best_epoch         the epoch BEST was saved at (0: none yet)
best_bleu4         validation BLEU-4 of the best epoch (null: none yet)
best_cider_d       its validation CIDEr-D (null: not measured)
best_score         the best epoch's score on ``monitor`` (null: none yet)
monitor            "bleu4" or "cider": the score that picks BEST (a2c: its --reward)
model_config       the architecture, as :class:`~capcli.config.ModelConfig` fields
saved              unix time of the save
checkpoint_bytes   the checkpoint file's size
=================  ===========================================================================
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict
from typing import TYPE_CHECKING

from capcli.config import name_problem
from capcli.data.jsonfiles import MAX_DEPTH, read_json, write_json
from capcli.errors import CapcliError
from capcli.paths import checkpoint_meta_file
from capcli.store.epochs import best, finite_number

if TYPE_CHECKING:
    from capcli.store.checkpoint import Checkpoint, TrainState

META_VERSION = 1
_NUMBER, _TEXT = (int, float), (str,)
# field → (accepted types, may be null)
_FIELDS = {"version": ((int,), False), "stage": (_TEXT, False), "run": (_TEXT, False), "data": (_TEXT, True),
           "epoch": ((int,), False), "step": ((int,), False), "best_epoch": ((int,), False),
           "best_bleu4": (_NUMBER, True), "best_cider_d": (_NUMBER, True), "best_score": (_NUMBER, True),
           "monitor": (_TEXT, False), "model_config": ((dict,), False), "saved": (_NUMBER, False),
           "checkpoint_bytes": ((int,), False)}


def best_figures(state: TrainState, monitor: str) -> dict:
    """The best epoch's validation scores and the score that picked it (the feed's end line)."""
    top = best(state.epochs, monitor)
    return {"bleu4": top.val_bleu4 if top else None, "cider_d": top.val_cider_d if top else None,
            "monitor": monitor, "best_score": state.best_score}


def best_scores(ckpt: Checkpoint) -> dict:
    """The best epoch's validation figures: best_epoch, best_bleu4, best_cider_d, best_score, monitor.
    The epoch is the best of the checkpoint's epoch records under the run's monitor (a2c: its reward);
    a checkpoint without records (a bundle from before they were kept) gives its saved counts."""
    state = ckpt.state
    if ckpt.stage == "a2c":
        monitor = "bleu4" if ckpt.a2c_config and ckpt.a2c_config.reward == "bleu4" else "cider"
    else:
        monitor = ckpt.train_config.monitor if ckpt.train_config else "bleu4"
    top = best(state.epochs, monitor)
    if top is not None:
        return {"best_epoch": top.epoch, "best_bleu4": top.val_bleu4, "best_cider_d": top.val_cider_d,
                "best_score": top.score(monitor), "monitor": monitor}
    none_yet = state.best_epoch == 0
    return {"best_epoch": state.best_epoch,
            "best_bleu4": None if none_yet else finite_number(getattr(state, "best_bleu4", None)),
            "best_cider_d": None, "best_score": None if none_yet else finite_number(state.best_score),
            "monitor": monitor}


def checkpoint_meta(ckpt: Checkpoint, run: str, checkpoint_bytes: int) -> dict:
    """The sidecar's content for ``ckpt`` (see the module docstring)."""
    scores = best_scores(ckpt)
    return {"version": META_VERSION, "stage": ckpt.stage, "run": run, "data": ckpt.data.name,
            "epoch": ckpt.state.epoch, "step": ckpt.state.step, "best_epoch": scores.pop("best_epoch"),
            **scores, "model_config": asdict(ckpt.model_config),
            "saved": ckpt.saved_at if ckpt.saved_at is not None else time.time(),
            "checkpoint_bytes": checkpoint_bytes}


def write_meta(path: str, ckpt: Checkpoint, run: str | None = None) -> None:
    """Write the sidecar of the checkpoint just saved at ``path`` (``run``: the run's name, by
    default its data's)."""
    meta = checkpoint_meta(ckpt, run or ckpt.data.name or "", os.path.getsize(path))
    write_json(checkpoint_meta_file(path), meta)


def read_meta(path: str) -> dict | None:
    """The sidecar of the checkpoint at ``path``, or None when it is absent, torn, malformed, from
    a newer capcli, or older than the checkpoint (which was then saved again without it)."""
    meta_path = checkpoint_meta_file(path)
    try:
        checkpoint = os.stat(path)
        if checkpoint.st_mtime > os.path.getmtime(meta_path):
            return None
        meta = read_json(meta_path, max_depth=MAX_DEPTH)
    except (OSError, CapcliError):  # absent, unreadable, not UTF-8, not JSON, too deep, a FIFO
        return None
    if not isinstance(meta, dict) or meta.get("version") != META_VERSION:
        return None
    for name, (types, nullable) in _FIELDS.items():
        value = meta.get(name)
        if value is None and nullable and name in meta:
            continue
        if not isinstance(value, types) or isinstance(value, bool):
            return None
    if any(meta[name] and name_problem(meta[name]) for name in ("run", "data")):
        return None  # a name that would lead a writer out of its folder: the checkpoint itself says
    return meta if meta["checkpoint_bytes"] == checkpoint.st_size else None
