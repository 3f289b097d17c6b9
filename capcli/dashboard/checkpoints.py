"""The dashboard's checkpoint rows: what it shows of each checkpoint in the run folder, and the
reader that lists them (in a worker thread).

A checkpoint's metadata sidecar (``capcli.store.sidecar.read_meta``: a few hundred bytes of JSON
written with every save) is all a row needs; only a checkpoint without one (written before
sidecars existed, or whose sidecar is torn) is loaded whole, as before.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass

from capcli.dashboard.follow import number
from capcli.paths import a2c_files, checkpoint_files, train_files


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


def run_checkpoints(output_folder: str, name: str) -> list[str]:
    """Run ``name``'s checkpoint paths, the BEST ones first (train's, then A2C's)."""
    train, a2c = train_files(output_folder, name), a2c_files(output_folder, name)
    return [train.best, a2c.best, train.checkpoint, a2c.checkpoint]


class CheckpointReader:
    """Lists the rows of a run folder's checkpoints (a worker thread), one reading at a time. A row
    is read again only when its file changed; a file that cannot be read is reported once and
    tried again when it is rewritten, or after :meth:`retry`."""

    def __init__(self, output_folder: str) -> None:
        self.output_folder = output_folder
        self.lock = threading.Lock()
        self.known: dict[str, CheckpointInfo] = {}  # the last reading's rows
        self.unreadable: dict[str, float | None] = {}  # checkpoint path → mtime when it could not be read

    def read(self) -> tuple[dict[str, CheckpointInfo], list[str]] | None:
        """(rows by path, one line per file that could not be read); None while the previous
        reading still goes (a checkpoint without sidecar takes a while)."""
        if not self.lock.acquire(blocking=False):
            return None
        try:
            found, problems = {}, []
            for path in checkpoint_files(self.output_folder):
                mtime = None
                try:
                    mtime = os.path.getmtime(path)
                    known = self.known.get(path)
                    if self.unreadable.get(path) != mtime:  # a file that failed is tried again once rewritten
                        found[path] = known if known and known.mtime == mtime else read_checkpoint_info(path, mtime)
                except Exception as exc:  # a strange file is reported once, never fatal to the app
                    self.unreadable[path] = mtime
                    problems.append(f"{os.path.basename(path)}: {exc}")
            self.known = found
            return found, problems
        finally:
            self.lock.release()

    def retry(self) -> None:
        """Try every file again at the next reading (key r)."""
        self.unreadable.clear()
