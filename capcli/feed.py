"""The metrics feed: one JSON object per line in ``model_outputs/metrics_{name}.jsonl``.

Every line carries ``time``, ``stage``, ``event``, ``split``, ``epoch``, ``step``, ``loss``,
``top5``, ``bleu4`` and ``lr`` (null where they do not apply) and is flushed as it is written,
so ``capcli metrics`` and the dashboard can follow a live run.

The file may be edited, truncated or damaged by anyone, so readers trust no line: a line that is
not UTF-8, not JSON, not an object, or has a known field of the wrong type (:data:`FIELD_TYPES`)
is skipped and counted, never passed on.
"""

from __future__ import annotations

import json
import math
import os
import time

from capcli import safeio

FIELDS = ("time", "stage", "event", "split", "epoch", "step", "loss", "top5", "bleu4", "lr")

_NUMBER, _INT, _STR, _BOOL = (int, float), (int,), (str,), (bool,)
# the type of every field train and a2c write (null is always allowed); other keys are kept unchecked
FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "time": _NUMBER, "stage": _STR, "event": _STR, "split": _STR, "epoch": _INT, "step": _INT,
    "loss": _NUMBER, "top5": _NUMBER, "bleu4": _NUMBER, "lr": _NUMBER,
    "epochs": _INT, "reason": _STR, "improved": _BOOL, "best_bleu4": _NUMBER,  # start, end, val lines
    "monitor": _STR, "best_score": _NUMBER,  # train's val and end lines: the score that picks BEST, its best
    "reward": _NUMBER, "advantage": _NUMBER, "entropy": _NUMBER, "actor_loss": _NUMBER,  # a2c epochs
    "critic_loss": _NUMBER, "entropy_weight": _NUMBER, "cider_d": _NUMBER,
}
# magnitudes no run writes (the writer turns NaN and infinities into null): larger counts would
# overflow float arithmetic, larger values the charts
_MAX_INT, _MAX_NUMBER = 2**53, 1e100


def _plain(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _fits(value, types: tuple[type, ...]) -> bool:
    if value is None:
        return True
    if isinstance(value, bool):  # JSON true is not a number here
        return bool in types
    if isinstance(value, int):
        return int in types and abs(value) <= _MAX_INT
    if isinstance(value, float):
        return float in types and math.isfinite(value) and abs(value) <= _MAX_NUMBER
    return isinstance(value, types)


def valid_line(line) -> bool:
    """Whether ``line`` (a parsed feed line) is an object whose known fields have their types."""
    return isinstance(line, dict) and all(_fits(line.get(k), t) for k, t in FIELD_TYPES.items())


def parse_line(raw: bytes) -> dict | None:
    """One complete feed line as a dict, or None when it is not UTF-8, not JSON or not valid."""
    try:
        line = json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError):  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        return None
    return line if valid_line(line) else None


def _complete_lines(path: str) -> list[bytes]:
    """The lines of ``path`` that end with a newline (a half-written last one is left out)."""
    with open(path, "rb") as f:
        *complete, _partial = f.read().split(b"\n")
    return complete


def scan_feed(path: str) -> tuple[list[dict], int]:
    """The valid complete lines of a feed and how many complete lines were skipped as invalid;
    a half-written last line is ignored (not counted)."""
    lines, skipped = [], 0
    for raw in _complete_lines(path):
        line = parse_line(raw)
        if line is None:
            skipped += 1
        else:
            lines.append(line)
    return lines, skipped


def read_feed(path: str) -> list[dict]:
    """The valid complete lines of a feed (see :func:`scan_feed`)."""
    return scan_feed(path)[0]


class MetricsFeed:
    """The writer of one run's feed: appends a line per event, never through a symbolic link."""

    def __init__(self, path: str, stage: str) -> None:
        self.path, self.stage = path, stage
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)

    def write(self, event: str, **values) -> dict:
        """Append one line (non-finite floats become null) and flush it.

        Raises:
            CapcliError: the feed's name is a symbolic link.
        """
        line = dict.fromkeys(FIELDS)
        line.update(time=round(time.time(), 3), stage=self.stage, event=event)
        line.update({k: _plain(v) for k, v in values.items()})
        with safeio.open_append(self.path) as f:
            f.write(json.dumps(line) + "\n")
            f.flush()
        return line

    def truncate_after(self, step: int, stage: str | None = None) -> int:
        """Drop lines of steps after ``step`` (work a resumed run is about to redo), only of
        ``stage`` when given; an atomic rewrite that also drops invalid lines.

        Returns:
            How many invalid lines were dropped (a half-written last line is not counted).
        """
        if not os.path.exists(self.path):
            return 0
        lines, skipped = scan_feed(self.path)
        kept = [json.dumps(line) + "\n" for line in lines
                if (line.get("step") or 0) <= step or (stage is not None and line.get("stage") != stage)]
        with safeio.atomic_write(self.path, text=True) as f:
            f.writelines(kept)
        return skipped
