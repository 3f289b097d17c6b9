"""The dashboard's checkpoint rows: what it shows of each checkpoint in the run folder.

A checkpoint's metadata sidecar (``capcli.store.sidecar.read_meta``: a few hundred bytes of JSON
written with every save) is all a row needs; only a checkpoint without one (written before
sidecars existed, or whose sidecar is torn) is loaded whole, as before.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from capcli.dashboard.follow import number


@dataclass(frozen=True)
class CheckpointInfo:
    path: str
    stage: str  # train or a2c
    epoch: int
    best_bleu4: float | None  # of the best epoch so far (for a BEST file: its own epoch)
    best_cider_d: float | None
    total_epochs: int | None  # the run's --epochs, when the loaded checkpoint says (sidecars do not)
    mtime: float
    size: int  # bytes
    from_sidecar: bool = False


def read_checkpoint_info(path: str, mtime: float) -> CheckpointInfo:
    """The row of ``path``: from its sidecar when there is one, else from the checkpoint itself.

    Raises:
        CheckpointError: no sidecar and the checkpoint cannot be read.
        OSError: the file went away.
    """
    from capcli.store.sidecar import read_meta

    size = os.path.getsize(path)
    meta = read_meta(path)
    if meta is not None:
        epoch = number(meta.get("epoch"))
        return CheckpointInfo(path, "a2c" if meta.get("stage") == "a2c" else "train", int(epoch or 0),
                              number(meta.get("best_bleu4")), number(meta.get("best_cider_d")), None, mtime,
                              size, from_sidecar=True)
    return _from_checkpoint(path, mtime, size)


def _from_checkpoint(path: str, mtime: float, size: int) -> CheckpointInfo:
    from capcli.store.files import read_checkpoint
    from capcli.store.sidecar import best_scores

    ckpt = read_checkpoint(path)
    scores = best_scores(ckpt)  # the figures its sidecar would hold
    options = ckpt.a2c_config if ckpt.stage == "a2c" else ckpt.train_config
    total = options.epochs if options else None
    return CheckpointInfo(path, ckpt.stage, ckpt.state.epoch, number(scores["best_bleu4"]),
                          number(scores["best_cider_d"]), total, mtime, size)
