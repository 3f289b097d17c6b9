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

from capcli.feed import samples_of
from capcli.paths import feed_file
from capcli.runs import FeedTail, RunSummary, summarize

STEP_FIELDS = ("pairs_per_s", "images_per_s", "data_wait", "mem_mb", "peak_mem_mb")


@dataclass(frozen=True)
class Sample:
    """A validation image with its generated caption and references."""

    image: str
    generated: str
    references: tuple[str, ...]


@dataclass(frozen=True)
class Polled:
    """What one read of a feed found."""

    new: list[dict]
    reset: bool
    exists: bool
    skipped: int


def number(value) -> float | None:
    """``value`` when it is a finite number (not a bool), else None."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    return value if ok else None


def read_samples(line: dict) -> list[Sample]:
    """A validation line's well-formed ``samples`` (``feed.samples_of``)."""
    return [Sample(s["image"], s["generated"], tuple(s["references"])) for s in samples_of(line)]


class Follower:
    """The state of one followed run (the run the dashboard shows, or the one compared with it)."""

    def __init__(self, output_folder: str, name: str) -> None:
        self.name = name
        self.tail = FeedTail(feed_file(output_folder, name))
        self.read_lock = threading.Lock()
        self.lines: list[dict] = []
        self.summary = RunSummary()
        self.exists = False
        self.skipped = 0
        self.step: dict[str, float | None] = dict.fromkeys(STEP_FIELDS)
        self.samples: list[Sample] = []
        self.samples_epoch: int | None = None
        self.state: str | None = None  # running / finished / stopped / crashed, from the run list

    @property
    def path(self) -> str:
        return self.tail.path

    def poll(self) -> Polled | None:
        """Read what the feed gained (worker thread); None while the previous read still runs.

        Raises:
            OSError: the feed exists but cannot be read.
        """
        if not self.read_lock.acquire(blocking=False):
            return None
        try:
            new = self.tail.poll()
            return Polled(new, self.tail.reset, self.tail.exists, self.tail.skipped)
        finally:
            self.read_lock.release()

    def changed(self, polled: Polled) -> bool:
        return bool(polled.new or polled.reset or polled.exists != self.exists or polled.skipped != self.skipped)

    def apply(self, polled: Polled) -> None:
        """Take a read's lines (UI thread)."""
        if polled.reset:
            self.lines, self.samples, self.samples_epoch = [], [], None
            self.step = dict.fromkeys(STEP_FIELDS)
        self.lines.extend(polled.new)
        for line in polled.new:
            if line.get("event") == "step":
                self.step = {key: number(line.get(key)) for key in STEP_FIELDS}
            elif line.get("event") == "epoch" and line.get("split") == "val" and "samples" in line:
                self.samples, self.samples_epoch = read_samples(line), line.get("epoch")
        self.exists, self.skipped = polled.exists, polled.skipped
        self.summary = summarize(self.lines, polled.skipped)
