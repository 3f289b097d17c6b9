"""The only place that calls ``torch.save`` / ``torch.load``.

A checkpoint is a dict of state dicts and plain Python data (no pickled classes, numpy scalars
or paths), written to a temporary file and renamed, and always read with ``weights_only=True``
so that a checkpoint file can never run code.
"""

from __future__ import annotations

import os
import tempfile

import torch

from capcli.errors import CheckpointError

FORMAT = "capcli-checkpoint"
VERSION = 1


def save_checkpoint(path: str, payload: dict) -> None:
    """Atomically write ``payload`` (state dicts and plain data) to ``path``."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, partial = tempfile.mkstemp(prefix=".partial-", suffix=".pth.tar", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save({"format": FORMAT, "version": VERSION, **payload}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(partial, path)
    except BaseException:
        if os.path.exists(partial):
            os.remove(partial)
        raise


def load_checkpoint(path: str) -> dict:
    """Read a capcli checkpoint safely.

    Raises:
        CheckpointError: missing file, unsafe or corrupt content, or not a capcli checkpoint.
    """
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: no such checkpoint")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling refused (unsafe) or a corrupt file
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path}: refused to load (not a safe capcli checkpoint: {first[:160]})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a capcli checkpoint")
    if data.get("version", 0) > VERSION:
        raise CheckpointError(f"{path}: written by a newer capcli (format {data['version']})")
    return data
