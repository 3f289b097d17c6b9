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
    greedy caption, "references": [its reference captions]}``. On the shapes set, ``content``: the
    share of validation images whose greedy caption names exactly the drawn coloured shapes
    (:mod:`capcli.evaluation.content`).
``heartbeat``
    written every :data:`HEARTBEAT_SECONDS` by a daemon thread of the process that holds the run,
    from its first to its last line (through validation and saving too), with the current
    ``epoch`` and ``step``: a feed whose last line is older than :data:`STALE_SECONDS` belongs to a
    run that is not alive (``capcli.runs.summary.run_state``).
``end``
    ``reason`` (``completed``: every epoch done; an early stop's reason; ``stopped by SIGINT`` and
    the like when a signal stopped it), ``best_bleu4``, ``monitor``, ``best_score``.

Fields are only ever added: a reader takes a missing field as null, so feeds written before a
field existed still read.

A long run's feed holds hundreds of thousands of step lines, so readers never load it whole: they
stream it in chunks (:func:`stream_feed`, :class:`FeedTail`), read its last line from its tail
(:func:`last_line`) or find its few start, epoch and end lines by a byte search (:func:`marked_lines`).

The file may be edited, truncated or damaged by anyone, so readers trust no line: a line that is
not UTF-8, not JSON, not an object, or has a known field of the wrong type (:data:`FIELD_TYPES`)
is skipped and counted, never passed on.
"""

from __future__ import annotations

import json
import math
import os
import re
import threading
import time
from collections.abc import Callable, Iterator

from capcli import safeio
from capcli.errors import InputError

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
    "content": _NUMBER,  # val epoch lines on the shapes set: capcli.evaluation.content's colour + shape accuracy
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
    if not isinstance(line, dict):
        return False
    for key, value in line.items():  # a missing field is null: only the present ones are checked
        types = FIELD_TYPES.get(key)
        if types is not None and value is not None and not _fits(value, types):
            return False
    return True


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


CHUNK_BYTES = 1 << 20  # read at a time: a feed is streamed, never read whole
TAIL_BYTES = 64 * 1024  # of a feed's end that hold its last lines (the state of its run)
MAX_LINE_BYTES = 1 << 20  # a longer "line" (no newline for a megabyte) is skipped, not kept
# the lines a run's state and best scores come from: start, epoch (train and val) and end lines; a
# byte search finds them among hundreds of thousands of step lines without parsing those
_MARKED = re.compile(rb'"event"\s*:\s*"(?:start|epoch|end)"')


def _blocks(f, max_bytes: int | None = None) -> Iterator[tuple[bytes, int]]:
    """Chunks of ``f`` from its position, each ending with a newline, with the file offset just
    after it (a half-written last line is left for the next read); ``max_bytes`` bounds the bytes
    read. A line over :data:`MAX_LINE_BYTES` is dropped rather than kept."""
    partial, read, dropping, base = b"", 0, False, f.tell()
    while max_bytes is None or read < max_bytes:
        chunk = f.read(CHUNK_BYTES)
        if not chunk:
            break
        read += len(chunk)
        cut = chunk.rfind(b"\n")
        if cut < 0:
            partial += b"" if dropping else chunk
            if len(partial) > MAX_LINE_BYTES:
                partial, dropping = b"", True
            continue
        block = chunk[chunk.find(b"\n") + 1:cut + 1] if dropping else partial + chunk[:cut + 1]
        partial, dropping = chunk[cut + 1:], False
        yield block, base + read - len(partial)


def _open(path: str):
    """A feed for reading, if it is a regular file: a FIFO at its name is one line, never a hang."""
    return safeio.open_regular(path, error=InputError)


def _split(block: bytes) -> list[bytes]:
    return block.split(b"\n")[:-1]


def parse_lines(raws) -> tuple[list[dict], int]:
    """The valid lines of ``raws`` (bytes) and how many were not."""
    lines = [line for line in map(parse_line, raws) if line is not None]
    return lines, len(raws) - len(lines)


def stream_feed(path: str) -> Iterator[tuple[list[dict], int]]:
    """A feed's valid complete lines a chunk at a time, each with the count of invalid lines in it."""
    with _open(path) as f:
        for block, _ in _blocks(f):
            yield parse_lines(_split(block))


def scan_feed(path: str) -> tuple[list[dict], int]:
    """The valid complete lines of a feed and how many complete lines were skipped as invalid;
    a half-written last line is ignored (not counted)."""
    lines, skipped = [], 0
    for some, bad in stream_feed(path):
        lines.extend(some)
        skipped += bad
    return lines, skipped


def read_feed(path: str) -> list[dict]:
    """The valid complete lines of a feed (see :func:`scan_feed`)."""
    return scan_feed(path)[0]


def marked_lines(path: str, offset: int = 0) -> tuple[list[dict], int]:
    """The valid start, epoch and end lines of a feed from byte ``offset`` on, in order, and the
    offset just after the last complete line: found by a byte search of each chunk, so that only
    they are parsed (a few per epoch), never the step or heartbeat lines."""
    found = []
    with _open(path) as f:
        f.seek(offset)
        for block, end in _blocks(f):
            offset = end
            spans: dict[int, int] = {}
            for match in _MARKED.finditer(block):
                start = block.rfind(b"\n", 0, match.start()) + 1
                spans[start] = block.find(b"\n", match.end())
            found += parse_lines([block[s:e] for s, e in sorted(spans.items())])[0]
    return found, offset


def last_line(path: str, size: int = TAIL_BYTES) -> dict | None:
    """The last valid complete line within the last ``size`` bytes of a feed (parsed from the end
    back: as a rule only the very last line is), or None."""
    with _open(path) as f:
        end = f.seek(0, os.SEEK_END)
        start = max(0, end - size)
        f.seek(start)
        data = f.read(end - start)
    raws = data.split(b"\n")[:-1]
    for raw in reversed(raws[1:] if start > 0 else raws):  # the first may be cut
        line = parse_line(raw)
        if line is not None:
            return line
    return None


class FeedTail:
    """Follows a feed that another process appends to: each :meth:`poll` returns the complete
    lines added since the last one, at most ``max_bytes`` of them (``more`` then says that more is
    there). A partial last line is kept until it is completed; a file that shrank or was replaced
    starts over (``reset`` is set); a missing file just yields nothing. Invalid lines are not
    returned; ``skipped`` counts them since the (last) start."""

    def __init__(self, path: str, max_bytes: int | None = None) -> None:
        self.path, self.max_bytes = path, max_bytes
        self.offset = 0
        self.identity: tuple[int, int] | None = None
        self.exists = False
        self.reset = False
        self.more = False
        self.skipped = 0

    def poll(self) -> list[dict]:
        lines = []
        for some in self.chunks():
            lines.extend(some)
        return lines

    def chunks(self) -> Iterator[list[dict]]:
        """As :meth:`poll`, a chunk of lines at a time, read as they are taken; ``reset`` and
        ``exists`` are set at once (before the first chunk), ``more`` after the last."""
        self.reset = self.more = False
        try:
            stat = os.stat(self.path)
        except FileNotFoundError:
            if self.exists:
                self._start_over()
            self.exists = False
            return iter(())
        identity = (stat.st_dev, stat.st_ino)
        if self.exists and (identity != self.identity or stat.st_size < self.offset):
            self._start_over()
        self.exists, self.identity = True, identity
        return self._read() if stat.st_size > self.offset else iter(())

    def _read(self) -> Iterator[list[dict]]:
        with _open(self.path) as f:
            start = f.seek(self.offset)
            for block, end in _blocks(f, self.max_bytes):
                lines, bad = parse_lines(_split(block))
                self.skipped += bad
                self.offset = end
                yield lines
            self.more = self.max_bytes is not None and f.tell() - start >= self.max_bytes

    def _start_over(self) -> None:
        self.offset, self.reset, self.skipped = 0, True, 0


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
