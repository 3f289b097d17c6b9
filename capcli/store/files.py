"""A run's model files as every command reads and writes them: a checkpoint saved with its
metadata sidecar, and read back (or, in its place, the inference bundle ``capcli export`` wrote: a
model without its run's state, which captions and evaluates like the checkpoint it came from and
never resumes), and the model such a file holds."""

from __future__ import annotations

import os

from capcli.model.captioner import model_from_weights
from capcli.model.decoder import AttentionDecoder, PlainDecoder
from capcli.model.encoder import Encoder
from capcli.paths import BUNDLE_FILES, bundle_of
from capcli.safeio import restore_previous
from capcli.store.bundle import read_bundle
from capcli.store.checkpoint import Checkpoint, read_checkpoint_file, write_checkpoint
from capcli.store.sidecar import write_meta


def save_checkpoint(path: str, checkpoint: Checkpoint, run: str | None = None) -> None:
    """Atomically write ``checkpoint`` to ``path``, then its metadata sidecar (``run``: the run's
    name, by default its data's).

    Raises:
        OSError: the write failed (a full disk); ``path`` keeps its previous content.
    """
    write_checkpoint(path, checkpoint)
    write_meta(path, checkpoint, run)


def read_checkpoint(path: str) -> Checkpoint:
    """The checkpoint at ``path``, or the bundle ``path`` names (its folder or its
    ``model.safetensors``), every field checked.

    Raises:
        CheckpointError: missing file, unsafe or corrupt content, not a capcli checkpoint or
            bundle, or a missing or malformed field.
    """
    # a checkpoint or bundle whose replacement was cut short is restored before its kind is told
    restore_previous((os.path.dirname(path) or ".") if os.path.basename(path) == BUNDLE_FILES["weights"] else path)
    if bundle_of(path) is not None:
        return read_bundle(path)
    return read_checkpoint_file(path)


def model_from_checkpoint(checkpoint: Checkpoint) -> tuple[Encoder, AttentionDecoder | PlainDecoder]:
    """The model saved in ``checkpoint`` (its fields already checked when it was read), on the CPU.

    Raises:
        CheckpointError: an architecture that cannot be built, or weights that do not fit it.
    """
    return model_from_weights(checkpoint.model_config, checkpoint.encoder, checkpoint.decoder, checkpoint.path)
