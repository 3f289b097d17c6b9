"""One run as the dashboard follows it: its feed's tail and lines, their summary, the figures of
the latest step (throughput, data wait, GPU memory) and the sample captions of the latest
validation epoch.

:meth:`Follower.poll` reads the file (a worker thread); :meth:`Follower.apply` takes the result
on the UI thread. Step and validation lines of feeds from before these fields simply lack them;
the feed is not trusted, so a field of the wrong type counts as absent.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass

from capcli.paths import feed_file
from capcli.runs.feed import samples_of
from capcli.runs.summary import FeedTail, RunSummary, Summarizer

READ_BYTES = 8 << 20  # at most this much a poll: a long feed shows while it is read, a chunk at a time
STEP_FIELDS = ("pairs_per_s", "images_per_s", "data_wait", "mem_mb", "peak_mem_mb")


@dataclass(frozen=True)
class Sample:
    """A validation image with its generated caption and references."""

    image: str
    generated: str
    references: tuple[str, ...]


@dataclass(frozen=True)
class Polled:
    """What one read of a feed found: the summary of every line read so far (a snapshot), and
    the latest step figures and validation samples among the new lines (None: none new)."""

    new: int  # lines read by this poll
    reset: bool
    exists: bool
    skipped: int
    more: bool  # the read stopped at READ_BYTES: read again at once
    summary: RunSummary
    step: dict | None = None
    samples: tuple[list[Sample], int | None] | None = None


def number(value) -> float | None:
    """``value`` when it is a finite number (not a bool), else None."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    return value if ok else None


def read_samples(line: dict) -> list[Sample]:
    """A validation line's well-formed ``samples`` (``feed.samples_of``)."""
    return [Sample(s["image"], s["generated"], tuple(s["references"])) for s in samples_of(line)]


class Follower:
    """The state of one followed run (the run the dashboard shows, or the one compared with it).

    The feed is read once, as it grows (``FeedTail``), into a :class:`~capcli.runs.summary.Summarizer`
    whose series are bounded; no line is kept."""

    def __init__(self, output_folder: str, name: str) -> None:
        self.name = name
        self.tail = FeedTail(feed_file(output_folder, name), max_bytes=READ_BYTES)
        self.summarizer = Summarizer()  # the worker's: only poll() touches it
        self.read_lock = threading.Lock()
        self.summary = RunSummary()  # the UI's: the snapshot of the last applied poll
        self.exists = False
        self.skipped = 0
        self.step: dict[str, float | None] = dict.fromkeys(STEP_FIELDS)
        self.samples: list[Sample] = []
        self.samples_epoch: int | None = None
        self.state: str | None = None  # running / finished / stopped / crashed, from capcli.runs.summary.run_info

    @property
    def path(self) -> str:
        return self.tail.path

    @property
    def lines(self) -> int:
        """Valid lines read so far."""
        return self.summary.lines

    def poll(self) -> Polled | None:
        """Read what the feed gained (worker thread); None while the previous read still runs.

        Raises:
            OSError: the feed exists but cannot be read.
        """
        if not self.read_lock.acquire(blocking=False):
            return None
        try:
            chunks = self.tail.chunks()
            if self.tail.reset:
                self.summarizer = Summarizer()
            new, step, samples = 0, None, None
            for lines in chunks:
                new += len(lines)
                for line in lines:
                    self.summarizer.add(line)
                    if line.get("event") == "step":
                        step = line
                    elif line.get("event") == "epoch" and line.get("split") == "val" and "samples" in line:
                        samples = line
            self.summarizer.s.skipped = self.tail.skipped
            return Polled(new, self.tail.reset, self.tail.exists, self.tail.skipped, self.tail.more,
                          self.summarizer.summary(), step and {key: number(step.get(key)) for key in STEP_FIELDS},
                          samples and (read_samples(samples), samples.get("epoch")))
        finally:
            self.read_lock.release()

    def changed(self, polled: Polled) -> bool:
        return bool(polled.new or polled.reset or polled.exists != self.exists or polled.skipped != self.skipped)

    def apply(self, polled: Polled) -> None:
        """Take a read's figures (UI thread)."""
        if polled.reset:
            self.samples, self.samples_epoch = [], None
            self.step = dict.fromkeys(STEP_FIELDS)
        if polled.step is not None:
            self.step = polled.step
        if polled.samples is not None:
            self.samples, self.samples_epoch = polled.samples
        self.exists, self.skipped = polled.exists, polled.skipped
        self.summary = polled.summary
