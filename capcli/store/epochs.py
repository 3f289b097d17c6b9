"""One record of a run's epochs, whatever wrote it.

Train and a2c both keep their epochs as ``list[EpochRecord]`` in the run state (``state.epochs``),
saved in the checkpoint as one dict per epoch. Checkpoints from before this record kept a training
run's epochs as lists of figures (``bleu_history`` and the ``history`` dict, where runs from before
CIDEr-D was measured have fewer CIDEr-D figures than epochs: the later epochs') and an a2c run's
as one dict per epoch; :func:`records_from_legacy` reads both into records. :func:`best` finds the
best epoch under the run's monitor; the sidecar, the bundle, ``capcli runs`` and the dashboard all
read a checkpoint's best epoch through it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

# the validation scores every record has, by monitor name (train's --monitor, a2c's --reward)
_SCORES = {"bleu4": "val_bleu4", "cider": "val_cider_d"}


def finite_number(value: object) -> float | None:
    """``value`` as a float when it is a finite number (not a bool), else None."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    return float(value) if ok else None


@dataclass(frozen=True)
class EpochRecord:
    """One epoch's validation scores (None where it was not measured or not a finite number) and
    the stage's other figures of that epoch (training: losses and top-5 accuracies; a2c: reward,
    entropy, critic loss...), as sorted (name, value) pairs."""

    epoch: int  # 1-based
    val_bleu4: float | None = None
    val_cider_d: float | None = None
    figures: tuple[tuple[str, float | None], ...] = ()

    def score(self, monitor: str) -> float | None:
        """The score ``monitor`` (bleu4 or cider) picks epochs by."""
        return getattr(self, _SCORES[monitor])

    def figure(self, name: str) -> float | None:
        return dict(self.figures).get(name)

    def as_dict(self) -> dict:
        """The record as the checkpoint saves it: one flat dict."""
        return {"epoch": self.epoch, "val_bleu4": self.val_bleu4, "val_cider_d": self.val_cider_d,
                **dict(self.figures)}

    @classmethod
    def from_dict(cls, raw: object) -> EpochRecord | None:
        """A saved record (None when ``raw`` is not a dict with a whole epoch number)."""
        if not isinstance(raw, dict) or not isinstance(raw.get("epoch"), int) or isinstance(raw["epoch"], bool):
            return None
        figures = tuple(sorted((str(k), finite_number(v)) for k, v in raw.items()
                               if k not in ("epoch", *_SCORES.values())))
        return cls(raw["epoch"], finite_number(raw.get("val_bleu4")), finite_number(raw.get("val_cider_d")), figures)


def record(epoch: int, bleu4: float, cider: float, **figures: float) -> EpochRecord:
    """The record of epoch ``epoch`` (1-based) with its validation scores and other figures."""
    return EpochRecord.from_dict({"epoch": epoch, "val_bleu4": bleu4, "val_cider_d": cider, **figures})


def best(records: list[EpochRecord], monitor: str) -> EpochRecord | None:
    """The first epoch with the highest ``monitor`` score (None: no epoch has one)."""
    scored = [r for r in records if r.score(monitor) is not None]
    return max(scored, key=lambda r: r.score(monitor)) if scored else None


def figure_lists(records: list[EpochRecord]) -> dict[str, list[float | None]]:
    """Each figure as one list over the epochs that have it (the seed's ``training_metrics`` layout)."""
    lists: dict[str, list[float | None]] = {}
    for r in records:
        for name, value in (*r.figures, ("val_cider_d", r.val_cider_d)):
            if value is not None or name != "val_cider_d":
                lists.setdefault(name, []).append(value)
    return lists


def records_from_legacy(stage: str, raw: dict) -> list[EpochRecord] | None:
    """The epochs of a checkpoint written before :class:`EpochRecord` (None: it has none of the old
    fields, or they are malformed)."""
    history = raw.get("history")
    if stage == "a2c":
        if not isinstance(history, list):
            return None
        return [r for r in map(EpochRecord.from_dict, history) if r is not None]
    bleus, history = raw.get("bleu_history"), history if history is not None else {}
    if not isinstance(bleus, list) or not isinstance(history, dict) or \
            not all(isinstance(v, list) for v in history.values()):
        return None
    epochs = raw.get("epoch") if isinstance(raw.get("epoch"), int) else 0
    count = max(len(bleus), epochs, *map(len, history.values()))
    columns = {"val_bleu4": bleus, **history}

    def value(column: list, i: int) -> object:  # a shorter list holds the later epochs' figures
        j = i - (count - len(column))
        return column[j] if j >= 0 else None

    return [EpochRecord.from_dict({"epoch": i + 1, **{k: value(c, i) for k, c in columns.items()}})
            for i in range(count)]
