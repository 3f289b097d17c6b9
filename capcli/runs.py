"""Reading runs: find a run's metrics feed and summarise it (``capcli metrics`` and the dashboard),
and list the runs of a folder with their state (``capcli runs``).

A feed may be growing while it is read: only complete lines count, so a half-written last
line is left for the next read. Lines that are not valid feed lines (``feed.valid_line``) are
skipped and counted in ``RunSummary.skipped``.

A run's state comes from its lock (``capcli.runlock``: the record of the process holding it,
emptied when that process lets go) and its feed (the end line, the heartbeat):

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
import time
from dataclasses import dataclass, field

from capcli.errors import InputError
from capcli.feed import STALE_SECONDS, parse_line, scan_feed, valid_line
from capcli.paths import config_file, feed_file, feed_pattern, lock_file, run_feeds
from capcli.runconfig import saved_data_name
from capcli.runlock import read_holder
from capcli.safeio import pid_alive

A2C_FIELDS = ("reward", "advantage", "entropy", "actor_loss", "critic_loss", "entropy_weight", "bleu4", "cider_d")


def find_feed(output_folder: str, name: str | None = None) -> str:
    """The path of ``metrics_{name}.jsonl`` in ``output_folder`` (the only one when no name)."""
    if not os.path.isdir(output_folder):
        raise InputError(f"{output_folder}: no such run folder (train first, or pass --output-folder)")
    feeds = run_feeds(output_folder)
    if name is not None:
        if name in feeds:
            return feeds[name]
        raise InputError(f"no run named {name!r} in {output_folder} (runs there: {', '.join(feeds) or 'none'})")
    if len(feeds) == 1:
        return next(iter(feeds.values()))
    if not feeds:
        raise InputError(f"no {os.path.basename(feed_pattern(output_folder))} in {output_folder} "
                         "(no run has written there yet)")
    raise InputError(f"several runs in {output_folder}: {', '.join(feeds)} (choose one with --name)")


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

    def add(self, name: str, x, y) -> None:
        if _finite(x) and _finite(y):
            self.series.setdefault(name, []).append((x, y))


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


def summarize(lines: list, skipped: int = 0) -> RunSummary:
    """Summary statistics and chart series of a feed's lines (non-finite values skipped).

    Args:
        lines: parsed lines; those that are not valid feed lines are skipped and counted.
        skipped: lines already skipped by the reader, added to the count.
    """
    valid = [line for line in lines if valid_line(line)]
    s = RunSummary(lines=len(valid), skipped=skipped + len(lines) - len(valid))
    lines = valid
    epoch_times: list[float] = []
    previous_end = lines[0]["time"] if lines and _finite(lines[0].get("time")) else None
    last_lr = None
    for line in lines:
        stage, event, split, epoch = line.get("stage"), line.get("event"), line.get("split"), line.get("epoch")
        s.stage = stage or s.stage
        s.last_time = line.get("time", s.last_time)
        if _finite(line.get("step")):
            s.last_step = max(s.last_step, int(line["step"]))
        if event == "end":
            s.ended = line.get("reason") or "ended"
            continue
        s.ended = None  # a line after an end: the run was resumed
        if event == "start":
            if _finite(line.get("epochs")) and stage:
                s.total_epochs[stage] = int(line["epochs"])
            s.names.update({k: line[k] for k in ("run", "data") if isinstance(line.get(k), str)})
            continue
        if stage == "a2c":
            _add_a2c_line(s, line)
            continue
        if event == "step":
            s.add("step_loss", line.get("step"), line.get("loss"))
            continue
        if event != "epoch":
            continue
        s.add(f"{split}_loss", epoch, line.get("loss"))
        s.add(f"{split}_top5", epoch, line.get("top5"))
        for key in ("loss", "top5"):
            if _finite(line.get(key)):
                s.last[f"{split}_{key}"] = line[key]
        if split == "val":
            s.epochs_done = max(s.epochs_done, epoch or 0)
            s.add("bleu4", epoch, line.get("bleu4"))
            s.add("cider_d", epoch, line.get("cider_d"))
            _track_best(s, line)
            lr = line.get("lr")
            if _finite(lr):
                if last_lr is not None and lr != last_lr:
                    s.lr_changes.append((epoch, lr))
                last_lr = lr
                s.last["lr"] = lr
            if _finite(line.get("time")) and previous_end is not None:
                epoch_times.append(line["time"] - previous_end)
            previous_end = line.get("time", previous_end)
    if epoch_times:
        s.mean_epoch_seconds = sum(epoch_times) / len(epoch_times)
    return s


def read_summary(path: str) -> RunSummary:
    return summarize(*scan_feed(path))


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


def _state(output_folder: str, name: str, summary: RunSummary, now: float) -> str:
    """See the module docstring."""
    holder = read_holder(lock_file(output_folder, name))
    pid = holder.get("pid") if holder else None
    if isinstance(pid, int) and not isinstance(pid, bool):
        if holder.get("host") not in (None, socket.gethostname()):  # no pid to ask: the heartbeat says
            fresh = summary.last_time is not None and now - summary.last_time <= STALE_SECONDS
            return "running" if fresh else "crashed"
        return "running" if pid_alive(pid) else "crashed"
    if summary.ended is None:
        return "crashed"
    return "finished" if summary.ended == "completed" else "stopped"


def run_state(output_folder: str, name: str) -> str:
    """``running``, ``finished``, ``stopped`` or ``crashed`` (see the module docstring)."""
    path = feed_file(output_folder, name)
    summary = read_summary(path) if os.path.exists(path) else RunSummary()
    return _state(output_folder, name, summary, time.time())


def _data_name(output_folder: str, name: str, summary: RunSummary) -> str:
    """The run's data: its start lines say, else its saved configuration, else (runs from before
    --run-name) its own name."""
    if "data" in summary.names:
        return summary.names["data"]
    return saved_data_name(config_file(output_folder, name)) or name


def run_info(output_folder: str, name: str, path: str, now: float | None = None) -> RunInfo:
    """The :class:`RunInfo` of run ``name`` whose feed is ``path``."""
    summary = read_summary(path)
    stage = summary.stage
    if stage == "a2c":
        best = summary.a2c_best or {}
        done = (summary.a2c or {}).get("epoch") or 0
        bleu4, cider = best.get("bleu4"), best.get("cider_d")
    else:
        done, bleu4, cider = summary.epochs_done, summary.best_bleu4, summary.best_cider_d
    return RunInfo(name=name, data=_data_name(output_folder, name, summary), stage=stage, epochs_done=done,
                   epochs_total=summary.total_epochs.get(stage or "train"), best_bleu4=bleu4, best_cider_d=cider,
                   state=_state(output_folder, name, summary, time.time() if now is None else now),
                   last_update=summary.last_time, feed=path)


def list_runs(output_folder: str) -> list[RunInfo]:
    """Every run with a feed in ``output_folder``, by name (none when the folder does not exist)."""
    now = time.time()
    return [run_info(output_folder, name, path, now) for name, path in run_feeds(output_folder).items()]


class FeedTail:
    """Follows a feed that another process appends to: each :meth:`poll` returns the complete
    lines added since the last one. A partial last line is kept until it is completed; a file
    that shrank or was replaced starts over (``reset`` is set); a missing file just yields nothing.
    Invalid lines are not returned; ``skipped`` counts them since the (last) start."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.offset = 0
        self.partial = b""
        self.identity: tuple[int, int] | None = None
        self.exists = False
        self.reset = False
        self.skipped = 0

    def poll(self) -> list[dict]:
        self.reset = False
        try:
            stat = os.stat(self.path)
        except FileNotFoundError:
            if self.exists:
                self._start_over()
            self.exists = False
            return []
        identity = (stat.st_dev, stat.st_ino)
        if self.exists and (identity != self.identity or stat.st_size < self.offset):
            self._start_over()
        self.exists, self.identity = True, identity
        if stat.st_size == self.offset:
            return []
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            chunk = f.read()
        self.offset += len(chunk)
        data = self.partial + chunk
        *complete, self.partial = data.split(b"\n")
        parsed = [parse_line(raw) for raw in complete]
        lines = [line for line in parsed if line is not None]
        self.skipped += len(parsed) - len(lines)
        return lines

    def _start_over(self) -> None:
        self.offset, self.partial, self.reset, self.skipped = 0, b"", True, 0
