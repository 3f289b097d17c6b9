"""The metrics feed: one JSON object per line in ``model_outputs/metrics_{run}.jsonl``.

Every line carries ``time`` (unix seconds), ``stage`` (train or a2c), ``event``, ``split``,
``epoch``, ``step``, ``loss``, ``top5``, ``bleu4`` and ``lr`` (null where they do not apply) and is
flushed as it is written, so ``capcli metrics``, ``capcli runs`` and the dashboard can follow a
live run. The events and the fields they add:

``start``
    ``epochs`` (the run's total), ``run`` (the run's name), ``data`` (the prepared data set's name).
``step`` (about 20 a training epoch; train: ``loss``, ``top5``, ``lr``; a2c: ``reward``, ``entropy``)
    ``pairs_per_s`` (image–caption pairs trained on per second since the last step line),
    ``images_per_s`` (images per second, likewise), ``data_wait`` (share 0..1 of that time spent
    waiting for the data loader), ``mem_mb`` and ``peak_mem_mb`` (CUDA memory allocated by tensors
    now and at its peak since the run started, MiB; null on other devices).
``epoch``, split ``train``
    ``loss``, ``top5`` (train); ``reward``, ``advantage``, ``entropy``, ``actor_loss``,
    ``critic_loss``, ``entropy_weight`` (a2c).
``epoch``, split ``val``
    ``bleu4``, ``cider_d``, ``improved`` (this epoch saved ``BEST_``), ``monitor`` and
    ``best_score`` (train: the score that picks BEST and its best), ``best_bleu4``, and
    ``samples``: up to 3 validation images, each ``{"image": its source name, "generated": the
    greedy caption, "references": [its reference captions]}``.
``heartbeat``
    written every :data:`HEARTBEAT_SECONDS` by a daemon thread of the process that holds the run,
    from its first to its last line (through validation and saving too), with the current
    ``epoch`` and ``step``: a feed whose last line is older than :data:`STALE_SECONDS` belongs to a
    run that is not alive (``capcli.runs.run_state``).
``end``
    ``reason`` (``completed``: every epoch done; an early stop's reason; ``stopped by SIGINT`` and
    the like when a signal stopped it), ``best_bleu4``, ``monitor``, ``best_score``.

Fields are only ever added: a reader takes a missing field as null, so feeds written before a
field existed still read.

The file may be edited, truncated or damaged by anyone, so readers trust no line: a line that is
not UTF-8, not JSON, not an object, or has a known field of the wrong type (:data:`FIELD_TYPES`)
is skipped and counted, never passed on.
"""

from __future__ import annotations

import json
import math
import os
import threading
import time
from collections.abc import Callable

from capcli import safeio

FIELDS = ("time", "stage", "event", "split", "epoch", "step", "loss", "top5", "bleu4", "lr")

HEARTBEAT_SECONDS = 5.0  # between two heartbeat lines of a live run
STALE_SECONDS = 10.0  # a feed silent for longer belongs to a run that is not alive
MAX_SAMPLES = 3  # validation images with their captions in a val epoch line

_NUMBER, _INT, _STR, _BOOL, _LIST = (int, float), (int,), (str,), (bool,), (list,)
# the type of every field train and a2c write (null is always allowed); other keys are kept unchecked
FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "time": _NUMBER, "stage": _STR, "event": _STR, "split": _STR, "epoch": _INT, "step": _INT,
    "loss": _NUMBER, "top5": _NUMBER, "bleu4": _NUMBER, "lr": _NUMBER,
    "epochs": _INT, "reason": _STR, "improved": _BOOL, "best_bleu4": _NUMBER,  # start, end, val lines
    "monitor": _STR, "best_score": _NUMBER,  # train's val and end lines: the score that picks BEST, its best
    "reward": _NUMBER, "advantage": _NUMBER, "entropy": _NUMBER, "actor_loss": _NUMBER,  # a2c epochs
    "critic_loss": _NUMBER, "entropy_weight": _NUMBER, "cider_d": _NUMBER,
    "run": _STR, "data": _STR,  # start lines
    "pairs_per_s": _NUMBER, "images_per_s": _NUMBER, "data_wait": _NUMBER,  # step lines
    "mem_mb": _NUMBER, "peak_mem_mb": _NUMBER,
    "samples": _LIST,  # val epoch lines (see samples_of)
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


def samples_of(line: dict) -> list[dict]:
    """The well-formed entries of a val line's ``samples`` (none in feeds from before it): each
    ``{"image": str, "generated": str, "references": [str, ...]}``."""
    samples = line.get("samples") or []
    return [s for s in samples if isinstance(s, dict) and isinstance(s.get("image"), str)
            and isinstance(s.get("generated"), str) and isinstance(s.get("references"), list)
            and all(isinstance(r, str) for r in s["references"])][:MAX_SAMPLES]


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
        self.listeners: list[Callable[[dict], None]] = []  # told every line written (TensorBoard)
        self._lock = threading.Lock()  # the heartbeat thread writes too
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)

    def write(self, event: str, **values) -> dict:
        """Append one line (non-finite floats become null) and flush it.

        Raises:
            CapcliError: the feed's name is a symbolic link.
        """
        line = dict.fromkeys(FIELDS)
        line.update(time=round(time.time(), 3), stage=self.stage, event=event)
        line.update({k: _plain(v) for k, v in values.items()})
        text = json.dumps(line) + "\n"
        with self._lock:
            with safeio.open_append(self.path) as f:
                f.write(text)
                f.flush()
            for listener in self.listeners:
                listener(line)
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


class Heartbeat:
    """A daemon thread writing a ``heartbeat`` line every ``seconds`` while the block runs.

    Args:
        where: the ``epoch`` and ``step`` to put in each line (read from the run's state).
    """

    def __init__(self, feed: MetricsFeed, where: Callable[[], dict], seconds: float = HEARTBEAT_SECONDS) -> None:
        self.feed, self.where, self.seconds = feed, where, seconds
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="capcli-heartbeat", daemon=True)

    def _beat(self) -> None:
        while not self._stop.wait(self.seconds):
            try:
                self.feed.write("heartbeat", **self.where())
            except OSError:  # a full disk: the training loop meets it too, and says so
                pass

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
