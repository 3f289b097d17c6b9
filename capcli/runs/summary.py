"""Reading runs: find a run's metrics feed and summarise it (``capcli metrics`` and the dashboard),
and list the runs of a folder with their state (``capcli runs``).

A feed may be growing while it is read: only complete lines count, so a half-written last
line is left for the next read. Lines that are not valid feed lines (``feed.valid_line``) are
skipped and counted in ``RunSummary.skipped``.

A run's state, epochs and best scores come from one function, :func:`run_info` (``capcli runs``,
``capcli metrics`` and the dashboard all ask it): it reads the feed's tail, the lock and the run's
config, and parses only the few start, epoch and end lines of the rest. The state comes from the
lock (``capcli.runs.lock``: the record of the process holding it, emptied when that process lets go)
and the feed (the end line, the heartbeat):

running
    the lock names a live process of this machine (or of another host whose heartbeat is fresh).
finished
    the lock is free and the feed's last end line says ``completed``: every epoch done.
stopped
    the lock is free and the end line gives another reason: a signal (``stopped by SIGINT``) or
    an early stop (no gain for --patience-stop epochs).
crashed
    the lock names a process that is gone (killed: SIGKILL, out of memory, power), or the lock is
    free and the feed has no end line (an error ended the process), or another host's run whose
    feed has been silent for more than ``feed.STALE_SECONDS``.
"""

from __future__ import annotations

import math
import os
import socket
import threading
import time
from dataclasses import dataclass, field, replace

from capcli import safeio
from capcli.errors import InputError
from capcli.paths import config_file, feed_file, feed_pattern, lock_file, run_feeds, run_name_of_feed
from capcli.runs.config import saved_data_name
from capcli.runs.feed import STALE_SECONDS, FeedTail, last_line, marked_lines, stream_feed, valid_line
from capcli.runs.lock import holder_live, read_holder

__all__ = ["FeedTail", "RunInfo", "RunSummary", "Summarizer", "find_feed", "list_runs", "read_summary",
           "run_info", "run_state", "summarize"]

MAX_STEP_BUCKETS = 500  # a per-step series keeps at most twice as many points, however long the run
A2C_FIELDS = ("reward", "advantage", "entropy", "actor_loss", "critic_loss", "entropy_weight", "bleu4", "cider_d")


def find_feed(output_folder: str, name: str | None = None) -> str:
    """The path of ``metrics_{name}.jsonl`` in ``output_folder`` (the only one when no name)."""
    if not os.path.isdir(output_folder):
        raise InputError(f"{output_folder}: no such run folder (train first, or pass --output-folder)")
    feeds = run_feeds(output_folder)
    if name is not None:
        if name in feeds:
            return feeds[name]
        if os.path.exists(feed_file(output_folder, name)):  # a FIFO or a folder: say so, never open it
            safeio.open_regular(feed_file(output_folder, name), error=InputError).close()
        raise InputError(f"no run named {name!r} in {output_folder} (runs there: {', '.join(feeds) or 'none'})")
    if len(feeds) == 1:
        return next(iter(feeds.values()))
    if not feeds:
        raise InputError(f"no {os.path.basename(feed_pattern(output_folder))} in {output_folder} "
                         "(no run has written there yet)")
    raise InputError(f"several runs in {output_folder}: {', '.join(feeds)} (choose one with --run-name)")


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass
class RunSummary:
    """Figures of one run, from its feed lines."""

    lines: int = 0  # valid lines
    skipped: int = 0  # complete lines that were not valid feed lines (not UTF-8, not JSON, wrong types)
    stage: str | None = None  # of the last line: train or a2c
    epochs_done: int = 0
    last_step: int = 0
    best_bleu4: float | None = None  # the validation BLEU-4 of the best epoch
    best_epoch: int | None = None
    best_cider_d: float | None = None  # its CIDEr-D (runs from before --monitor measured none)
    monitor: str = "bleu4"  # the score the run picks BEST on (feeds from before --monitor: BLEU-4)
    last: dict = field(default_factory=dict)  # train_loss, val_loss, train_top5, val_top5, lr
    mean_epoch_seconds: float | None = None
    lr_changes: list[tuple[int, float]] = field(default_factory=list)  # (epoch, new lr)
    ended: str | None = None  # the end reason, when the run finished
    last_time: float | None = None  # of the last line (heartbeats included)
    series: dict[str, list[tuple[float, float]]] = field(default_factory=dict)  # name → (epoch or step, value)
    a2c: dict | None = None  # last a2c epoch's figures and best validation scores
    total_epochs: dict[str, int] = field(default_factory=dict)  # stage → --epochs of its latest start
    names: dict[str, str] = field(default_factory=dict)  # run and data, from the latest start line naming them
    a2c_best: dict | None = None  # the a2c val line that saved BEST_A2C (bleu4, cider_d, epoch)
    state: str | None = None  # running, finished, stopped or crashed (run_info), when read from a folder
    buckets: dict[str, Buckets] = field(default_factory=dict, repr=False)  # per-step series, downsampled

    def add(self, name: str, x, y) -> None:
        if _finite(x) and _finite(y):
            self.series.setdefault(name, []).append((x, y))

    def add_step(self, name: str, x, y) -> None:
        """A per-step point: kept in :class:`Buckets`, so that the series stays bounded."""
        if _finite(x) and _finite(y):
            self.buckets.setdefault(name, Buckets()).add(x, y)


class Buckets:
    """A series downsampled as it grows, as charts of long runs need it: consecutive points fall in
    at most ``size`` buckets of ``width`` points each, a bucket keeps its lowest and its highest
    point, and when the buckets are full, neighbours merge and ``width`` doubles. Short series are
    kept whole (``width`` 1); :meth:`points` has the first and last point too, at most
    ``2 × size + 2``, in order."""

    def __init__(self, size: int = MAX_STEP_BUCKETS) -> None:
        self.size, self.width = size, 1
        self.buckets: list[list] = []  # [count, (x, y) lowest, (x, y) highest]
        self.ends: list[tuple] = []  # the first point and the last

    def add(self, x, y) -> None:
        self.ends[1:] = [(x, y)]
        if not self.buckets or self.buckets[-1][0] >= self.width:
            if len(self.buckets) >= self.size:
                self._merge()
            if not self.buckets or self.buckets[-1][0] >= self.width:
                self.buckets.append([0, (x, y), (x, y)])
        bucket = self.buckets[-1]
        bucket[0] += 1
        if y < bucket[1][1]:
            bucket[1] = (x, y)
        if y > bucket[2][1]:
            bucket[2] = (x, y)

    def _merge(self) -> None:
        merged = []
        for i in range(0, len(self.buckets), 2):
            pair = self.buckets[i:i + 2]
            merged.append([sum(b[0] for b in pair), min((b[1] for b in pair), key=lambda p: p[1]),
                           max((b[2] for b in pair), key=lambda p: p[1])])
        self.buckets, self.width = merged, self.width * 2

    def points(self) -> list[tuple[float, float]]:
        out = self.ends[:1]
        for _, low, high in self.buckets:
            out += [p for p in ([low] if low == high else sorted((low, high))) if p != out[-1]]
        return out + [p for p in self.ends[1:] if p != out[-1]]


def _add_a2c_line(s: RunSummary, line: dict) -> None:
    event, split, epoch = line.get("event"), line.get("split"), line.get("epoch")
    if event == "epoch" and split == "train":
        s.a2c = {**(s.a2c or {}), **{k: line.get(k) for k in A2C_FIELDS if k in line}, "epoch": epoch}
        s.add("a2c_reward", epoch, line.get("reward"))
        s.add("a2c_entropy", epoch, line.get("entropy"))
    elif event == "epoch" and split == "val":
        s.a2c = {**(s.a2c or {}), "val_bleu4": line.get("bleu4"), "val_cider_d": line.get("cider_d")}
        if line.get("improved"):
            s.a2c_best = {k: line.get(k) for k in ("bleu4", "cider_d", "epoch")}
        s.add("a2c_val_bleu4", epoch, line.get("bleu4"))
        s.add("a2c_val_cider_d", epoch, line.get("cider_d"))


def _track_best(s: RunSummary, line: dict) -> None:
    """A training val line is the best epoch when the run said so (``improved``); a line without
    that flag when its monitored score beats the best so far."""
    s.monitor = line.get("monitor") or s.monitor
    key = "cider_d" if s.monitor == "cider" else "bleu4"
    value = line.get(key)
    best_value = s.best_cider_d if key == "cider_d" else s.best_bleu4
    improved = line.get("improved")
    if improved is None:
        improved = _finite(value) and (best_value is None or value > best_value)
    if improved and (_finite(line.get("bleu4")) or _finite(line.get("cider_d"))):
        s.best_bleu4, s.best_cider_d, s.best_epoch = line.get("bleu4"), line.get("cider_d"), line.get("epoch")


class Summarizer:
    """Builds a :class:`RunSummary` a line at a time (a feed read once, as it streams or grows):
    :meth:`add` takes valid lines, :meth:`summary` returns a snapshot of the figures so far."""

    def __init__(self) -> None:
        self.s = RunSummary()
        self.previous_end: float | None = None  # time of the last val line (or the first line)
        self.last_lr: float | None = None
        self.epoch_seconds = [0.0, 0]  # sum, count

    def add_all(self, lines: list, skipped: int = 0) -> None:
        """Parsed lines; those that are not valid feed lines are skipped and counted."""
        valid = [line for line in lines if valid_line(line)]
        self.s.skipped += skipped + len(lines) - len(valid)
        for line in valid:
            self.add(line)

    def add(self, line: dict) -> None:
        s = self.s
        if not s.lines and _finite(line.get("time")):
            self.previous_end = line["time"]
        s.lines += 1
        stage, event, split = line.get("stage"), line.get("event"), line.get("split")
        s.stage = stage or s.stage
        s.last_time = line.get("time", s.last_time)
        if _finite(line.get("step")):
            s.last_step = max(s.last_step, int(line["step"]))
        if event == "end":
            s.ended = line.get("reason") or "ended"
            return
        s.ended = None  # a line after an end: the run was resumed
        if event == "start":
            if _finite(line.get("epochs")) and stage:
                s.total_epochs[stage] = int(line["epochs"])
            s.names.update({k: line[k] for k in ("run", "data") if isinstance(line.get(k), str)})
        elif stage == "a2c":
            _add_a2c_line(s, line)
        elif event == "step":
            s.add_step("step_loss", line.get("step"), line.get("loss"))
        elif event == "epoch":
            self._add_epoch(line, split, line.get("epoch"))

    def _add_epoch(self, line: dict, split, epoch) -> None:
        s = self.s
        s.add(f"{split}_loss", epoch, line.get("loss"))
        s.add(f"{split}_top5", epoch, line.get("top5"))
        for key in ("loss", "top5"):
            if _finite(line.get(key)):
                s.last[f"{split}_{key}"] = line[key]
        if split != "val":
            return
        s.epochs_done = max(s.epochs_done, epoch or 0)
        s.add("bleu4", epoch, line.get("bleu4"))
        s.add("cider_d", epoch, line.get("cider_d"))
        _track_best(s, line)
        lr = line.get("lr")
        if _finite(lr):
            if self.last_lr is not None and lr != self.last_lr:
                s.lr_changes.append((epoch, lr))
            self.last_lr = lr
            s.last["lr"] = lr
        if _finite(line.get("time")) and self.previous_end is not None:
            self.epoch_seconds = [self.epoch_seconds[0] + line["time"] - self.previous_end, self.epoch_seconds[1] + 1]
        self.previous_end = line.get("time", self.previous_end)

    def summary(self) -> RunSummary:
        """A snapshot: later lines do not change it."""
        s = self.s
        series = {k: list(v) for k, v in s.series.items()}
        series.update({k: b.points() for k, b in s.buckets.items()})
        total, count = self.epoch_seconds
        return replace(s, series=series, last=dict(s.last), lr_changes=list(s.lr_changes),
                       total_epochs=dict(s.total_epochs), names=dict(s.names), a2c=dict(s.a2c) if s.a2c else None,
                       mean_epoch_seconds=total / count if count else None, buckets={})


def summarize(lines: list, skipped: int = 0) -> RunSummary:
    """Summary statistics and chart series of a feed's lines (non-finite values skipped; per-step
    series downsampled to at most ``2 × MAX_STEP_BUCKETS`` points).

    Args:
        lines: parsed lines; those that are not valid feed lines are skipped and counted.
        skipped: lines already skipped by the reader, added to the count.
    """
    summarizer = Summarizer()
    summarizer.add_all(lines, skipped)
    return summarizer.summary()


def read_summary(path: str) -> RunSummary:
    """The summary of the feed at ``path``, read once as it streams (never whole in memory), with
    the run's state from :func:`run_info` (the run's folder is the feed's)."""
    summarizer = Summarizer()
    for lines, skipped in stream_feed(path):
        summarizer.s.skipped += skipped
        for line in lines:
            summarizer.add(line)
    summary = summarizer.summary()
    summary.state = run_info(os.path.dirname(path) or ".", run_name_of_feed(path), path).state
    return summary


# --- the runs of a folder --------------------------------------------------------------------

STATES = ("running", "finished", "stopped", "crashed")


@dataclass(frozen=True)
class RunInfo:
    """One run of an output folder, as ``capcli runs`` lists it."""

    name: str
    data: str  # the prepared data set's name
    stage: str | None  # train or a2c: the stage of the feed's last line
    epochs_done: int  # of that stage
    epochs_total: int | None  # its --epochs (None: the feed has no start line)
    best_bleu4: float | None  # validation scores of that stage's best epoch
    best_cider_d: float | None
    state: str  # one of STATES
    last_update: float | None  # unix time of the feed's last line
    feed: str  # path of the feed
    ended: str | None = None  # the end line's reason when it is the feed's last line


def _state(output_folder: str, name: str, ended: str | None, last_time: float | None, now: float) -> str:
    """See the module docstring."""
    holder = read_holder(lock_file(output_folder, name))
    pid = holder.get("pid") if holder else None
    if isinstance(pid, int) and not isinstance(pid, bool):
        if holder.get("host") not in (None, socket.gethostname()):  # no pid to ask: the heartbeat says
            fresh = last_time is not None and now - last_time <= STALE_SECONDS
            return "running" if fresh else "crashed"
        return "running" if holder_live(holder) else "crashed"
    if ended is None:
        return "crashed"
    return "finished" if ended == "completed" else "stopped"


def run_state(output_folder: str, name: str) -> str:
    """``running``, ``finished``, ``stopped`` or ``crashed`` (see the module docstring)."""
    return run_info(output_folder, name).state


def _data_name(output_folder: str, name: str, summary: RunSummary) -> str:
    """The run's data: its start lines say, else its saved configuration (the run's sidecar
    ``config_{run}.json``), else (runs from before --run-name) its own name."""
    if "data" in summary.names:
        return summary.names["data"]
    return saved_data_name(config_file(output_folder, name)) or name


_SCANS: dict[str, tuple[tuple[int, int], int, Summarizer]] = {}  # path → (identity, bytes scanned, summary)
_SCANS_LOCK = threading.Lock()


def _marked_summary(path: str) -> RunSummary:
    """The summary of a feed's start, epoch and end lines; a process that asks again (the
    dashboard, every few seconds) only scans the bytes appended since (a replaced or shorter file
    is scanned again)."""
    stat = os.stat(path)
    identity = (stat.st_dev, stat.st_ino)
    with _SCANS_LOCK:
        known, offset, summarizer = _SCANS.get(path, (None, 0, None))
        if summarizer is None or known != identity or stat.st_size < offset:
            offset, summarizer = 0, Summarizer()
        lines, offset = marked_lines(path, offset)
        summarizer.add_all(lines)
        _SCANS[path] = (identity, offset, summarizer)
        return summarizer.summary()


def run_info(output_folder: str, name: str, path: str | None = None, now: float | None = None) -> RunInfo:
    """The :class:`RunInfo` of run ``name`` (its feed: ``path``, by default the folder's): the one
    place a run's state, epochs and best scores are worked out (``capcli runs``, ``capcli metrics``
    and the dashboard all ask here). It reads the feed's last :data:`~capcli.runs.feed.TAIL_BYTES` (the
    last line: its time, stage and end), the run's lock and config, and only the start, epoch and
    end lines of the rest (``feed.marked_lines``: a byte search; step lines are never parsed)."""
    path = path or feed_file(output_folder, name)
    exists = os.path.exists(path)
    summary = _marked_summary(path) if exists else RunSummary()
    last = last_line(path) if exists else None
    stage = last.get("stage") if last else summary.stage
    ended = summary.ended if last is None else (last.get("reason") or "ended") if last.get("event") == "end" else None
    last_time = last.get("time") if last else summary.last_time
    if stage == "a2c":
        best = summary.a2c_best or {}
        done = (summary.a2c or {}).get("epoch") or 0
        bleu4, cider = best.get("bleu4"), best.get("cider_d")
    else:
        done, bleu4, cider = summary.epochs_done, summary.best_bleu4, summary.best_cider_d
    return RunInfo(name=name, data=_data_name(output_folder, name, summary), stage=stage, epochs_done=done,
                   epochs_total=summary.total_epochs.get(stage or "train"), best_bleu4=bleu4, best_cider_d=cider,
                   state=_state(output_folder, name, ended, last_time, time.time() if now is None else now),
                   last_update=last_time, feed=path, ended=ended)


def list_runs(output_folder: str) -> list[RunInfo]:
    """Every run with a feed in ``output_folder``, by name (none when the folder does not exist)."""
    now = time.time()
    return [run_info(output_folder, name, path, now) for name, path in run_feeds(output_folder).items()]
