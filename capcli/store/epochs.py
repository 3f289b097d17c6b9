"""One record of a run's epochs, whatever wrote it.

A training checkpoint keeps its epochs as lists of figures (``TrainState.bleu_history`` and
``TrainState.history``, where runs from before CIDEr-D was measured have fewer CIDEr-D figures than
epochs: the later epochs'), an a2c checkpoint as one dict per epoch. :func:`epoch_records` reads
either into one ``list[EpochRecord]``, and :func:`best_record` finds the best epoch in it; the
sidecar, the bundle and the dashboard all read a checkpoint's epochs through them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from capcli.store.checkpoint import A2CState, TrainState


@dataclass(frozen=True)
class EpochRecord:
    """One epoch's validation scores (None where it was not measured or not a finite number)."""

    epoch: int  # 1-based
    val_bleu4: float | None = None
    val_cider_d: float | None = None


def finite_number(value: object) -> float | None:
    """``value`` as a float when it is a finite number (not a bool), else None."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    return float(value) if ok else None


def epoch_records(state: TrainState | A2CState) -> list[EpochRecord]:
    """Every epoch ``state`` records, in order."""
    if isinstance(state.history, list):  # a2c: one dict per epoch
        return [EpochRecord(h["epoch"], finite_number(h.get("val_bleu4")), finite_number(h.get("val_cider_d")))
                for h in state.history if isinstance(h, dict) and isinstance(h.get("epoch"), int)]
    bleus = list(state.bleu_history)
    ciders = list(state.history.get("val_cider_d", []))
    first = max(len(bleus), state.epoch) - len(ciders)  # the epochs before CIDEr-D was measured
    count = max(len(bleus), len(ciders) + max(first, 0))
    return [EpochRecord(i + 1, finite_number(bleus[i]) if i < len(bleus) else None,
                        finite_number(ciders[i - first]) if 0 <= i - first < len(ciders) else None)
            for i in range(count)]


def best_record(records: list[EpochRecord], best_epoch: int) -> EpochRecord | None:
    """The record of epoch ``best_epoch`` (the one the run's monitor picked), or None (none yet,
    or an epoch the records lack)."""
    return next((r for r in records if r.epoch == best_epoch), None) if best_epoch > 0 else None
