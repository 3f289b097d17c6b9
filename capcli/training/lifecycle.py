"""The life of a run, shared by ``train`` and ``a2c``: what each keeps is its step, its epoch and its state.

A run holds its lock (``capcli.runs.lock``) while it writes; refuses to resume what is not there and
to replace what is there without ``--overwrite``; drops the feed lines of work it is about to
redo; writes the feed's start line, a heartbeat every few seconds while it runs and an end line
(also when a signal stops it: ``stopped by SIGINT``); saves the latest checkpoint after every epoch (and
every ``--save-every`` minutes) and ``BEST_`` when the epoch improved, each with its metadata sidecar;
and on SIGINT/SIGTERM/SIGHUP finishes the step, saves, and stops with the exact command that resumes
it. Under torchrun a signal to any rank stops every rank after the same step, and rank 0 alone saves.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from capcli.errors import CheckpointError, Interrupted
from capcli.paths import RunFiles, run_name_of_feed
from capcli.runs.config import write_run_config
from capcli.runs.feed import Heartbeat, MetricsFeed
from capcli.runs.lock import run_lock
from capcli.runtime.distributed import DistInfo, barrier, max_over_ranks
from capcli.runtime.progress import Progress
from capcli.store.checkpoint import Checkpoint, RunState
from capcli.store.files import save_checkpoint


@dataclass(frozen=True)
class Stage:
    """The words and feed rules that differ between the two stages of a run."""

    name: str  # the command, and the feed's stage
    checkpoint: str  # what its checkpoint is called in messages
    first_run: str  # how to make one when --resume finds none
    overwrite_replaces: str  # what --overwrite replaces
    where: str  # where a signal stopped it, from epoch and step
    truncates_own_lines: bool  # a new or resumed run drops only this stage's feed lines (else every stage's)


TRAIN = Stage("train", "checkpoint", "train without --resume first", "its checkpoints and metrics",
              "at epoch {epoch} step {step}", truncates_own_lines=False)
A2C = Stage("a2c", "A2C checkpoint", "start with --checkpoint first",
            "the A2C checkpoints and the feed's a2c lines", "in A2C epoch {epoch}", truncates_own_lines=True)


@contextlib.contextmanager
def stop_on_signals() -> Iterator[None]:
    """SIGTERM and SIGHUP raise :class:`Interrupted` in the block (one line, exit 128 + the signal, and
    every ``finally`` runs: the run's lock is released), where they would otherwise end the process
    with no word; :meth:`Lifecycle.run` replaces this with its own saving handler for the epochs.
    SIGINT already raises KeyboardInterrupt."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, _frame) -> None:
        signal.signal(signum, signal.SIG_DFL)  # a second signal ends the process at once
        raise Interrupted(f"stopped by {signal.Signals(signum).name} outside the training steps "
                          "(while the run was starting or ending); nothing more was saved", signum)

    previous = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


@contextlib.contextmanager
def hold_run(files: RunFiles, progress: Progress, writer: bool = True) -> Iterator[None]:
    """The run's lock, for the process that writes its files (other DDP ranks hold nothing), with
    signals stopping the block in one line (:func:`stop_on_signals`)."""
    with stop_on_signals(), (run_lock(files.lock, progress.message) if writer else contextlib.nullcontext()):
        yield


@dataclass
class RunResult:
    """What a call of ``train`` or ``a2c`` did, for the command to print."""

    stage: str  # train or a2c
    name: str  # the run's
    epochs_done: int  # in all, after this call
    best_epoch: int
    best_score: float  # the best epoch's score on ``monitor``
    monitor: str  # bleu4 or cider: what picks BEST (a2c: its --reward)
    best_bleu4: float | None  # the best epoch's validation BLEU-4 (train; None for a2c, which reports best_score)
    checkpoint: str
    best_checkpoint: str
    stop_reason: str  # completed, early stopping's reason, or why nothing was trained
    seconds: float
    epochs_trained: int = 0  # in this call: 0 when --epochs asked for nothing more
    main_rank: bool = True  # False on the other torchrun ranks, which print nothing


def open_run(stage: Stage, files: RunFiles, progress: Progress, hold: contextlib.ExitStack, *, resume: bool,
             overwrite: bool, read: Callable[[str], Checkpoint], continue_from: str | None = None,
             writer: bool = True) -> Checkpoint | None:
    """The one order in which ``train`` and ``a2c`` open a run once its data and name are known:
    take the run's lock (on ``hold``, until the run ends), then read what the run continues
    (``continue_from``, else its own checkpoint with ``resume``: read under the lock, so that no
    other process is writing it) or refuse to replace an existing run. Returns that checkpoint, or
    None for a new run. The feed and the run config come after, in :meth:`Lifecycle.begin`.

    Raises:
        RunLocked: another live process holds the run.
        CheckpointError: nothing to resume, a run that exists without --overwrite, or a
            checkpoint ``read`` refuses.
    """
    hold.enter_context(hold_run(files, progress, writer))
    if continue_from:
        return read(continue_from)
    if resume:
        return read(existing_checkpoint(files, stage))
    refuse_overwrite(files, stage, overwrite)
    return None


def existing_checkpoint(files: RunFiles, stage: Stage) -> str:
    """The checkpoint ``--resume`` continues.

    Raises:
        CheckpointError: there is none yet.
    """
    if not os.path.exists(files.checkpoint):
        raise CheckpointError(f"--resume: no {stage.checkpoint} at {files.checkpoint} ({stage.first_run})")
    return files.checkpoint


def refuse_overwrite(files: RunFiles, stage: Stage, overwrite: bool) -> None:
    """A new run never replaces an existing one unless told to.

    Raises:
        CheckpointError: the run's checkpoint exists and ``overwrite`` is not set.
    """
    if os.path.exists(files.checkpoint) and not overwrite:
        raise CheckpointError(f"{files.checkpoint} exists: continue it with --resume, or start over with "
                              f"--overwrite (which replaces {stage.overwrite_replaces})")


class Lifecycle:
    """One run from its first epoch to its last: signals, the feed's start and end lines, saving.

    Args:
        snapshot: the run's checkpoint as of now (called only when saving).
        ranks: the torchrun ranks (rank 0 alone writes the run's files); one process when None.
        save_every: minutes between saves inside an epoch (0: only at epoch ends).
    """

    def __init__(self, stage: Stage, files: RunFiles, state: RunState, snapshot: Callable[[], Checkpoint],
                 ranks: DistInfo | None = None, save_every: float = 0.0, names: dict | None = None,
                 tensorboard: str | None = None) -> None:
        self.stage, self.files, self.state, self.snapshot = stage, files, state, snapshot
        self.names = names or {}  # run and data: the start line names them
        self.tensorboard_folder, self.tensorboard = tensorboard, None  # --tensorboard: its folder, its sink
        self.ranks = ranks or DistInfo()
        self.writer, self.save_every = self.ranks.is_main, save_every
        self.feed = MetricsFeed(files.feed, stage.name) if self.writer else None
        self.resume_hint = f"capcli {stage.name} --resume"
        self.stop_signal: int | None = None
        self._last_save = time.monotonic()

    def begin(self, resumed: bool, data_folder: str, options: dict) -> None:
        """Start writing the run, once :func:`open_run` holds it: drop the feed lines of work about to
        be redone (all of them for a new run, the TensorBoard events too with --tensorboard), then
        write the run's configuration (``options``: the stage's and the model's configs)."""
        if self.feed:
            self.feed.truncate_after(self.state.step if resumed else -1,
                                     stage=self.stage.name if self.stage.truncates_own_lines else None)
        if self.feed and self.tensorboard_folder:
            from capcli.runs.tensorboard import TensorBoardSink

            self.tensorboard = TensorBoardSink(self.tensorboard_folder, self.state.step if resumed else 0)
            self.feed.listeners.append(self.tensorboard)
        if self.feed:
            write_run_config(self.files.config, self.stage.name, self.names["run"], data_folder, self.names["data"],
                             options, resumed=resumed)

    def run(self, epochs: int, epoch: Callable[[int], str | None], end: Callable[[], dict] = dict) -> str:
        """Run ``epoch(i)`` for the epochs left up to ``epochs`` until one returns a reason to stop.

        Returns:
            Why the run ended ("completed" or the epoch's reason), as the feed's end line says.
        """
        in_main_thread = threading.current_thread() is threading.main_thread()
        # SIGHUP: the SSH session that started the run dropped
        signals = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP) if in_main_thread else ()
        previous = {s: signal.signal(s, self._on_signal) for s in signals}
        reason = "completed"
        if self.feed:  # the total lets followers of the feed show progress and an ETA
            self.feed.write("start", epoch=self.state.epoch, step=self.state.step, epochs=epochs, **self.names)
        beating = Heartbeat(self.feed, self._where) if self.feed else contextlib.nullcontext()
        try:
            with beating:
                for index in range(self.state.epoch, epochs):
                    self._last_save = time.monotonic()
                    stop = epoch(index)
                    if stop:
                        reason = stop
                        break
        except Interrupted as exc:  # saved: the feed says the run was stopped, not that it died
            if self.feed:
                self.feed.write("end", **self._where(), reason=f"stopped by {signal.Signals(exc.signum).name}",
                                **end())
            raise
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
            self.close()  # TensorBoard takes no end line
        if self.feed:
            self.feed.write("end", **self._where(), reason=reason, **end())
        return reason

    def close(self) -> None:
        """Flush and close the TensorBoard events (also when the run failed)."""
        if self.tensorboard is not None:
            self.tensorboard.close()
            self.feed.listeners.remove(self.tensorboard)
            self.tensorboard = None

    def _where(self) -> dict:
        return {"epoch": self.state.epoch, "step": self.state.step}

    def after_step(self, task) -> None:
        """Between two steps: after a signal, save and stop; with ``save_every``, save when it is due.

        Raises:
            Interrupted: a signal came (to any rank); the checkpoint is saved and the message says
                how to resume.
        """
        signum = max_over_ranks(self.stop_signal or 0, self.ranks)  # every rank stops after the same step
        if signum:
            task.close()
            self.save(best=False)
            barrier(self.ranks)  # no rank exits before the checkpoint is written (torchrun stops the rest then)
            name = signal.Signals(signum).name
            where = self.stage.where.format(epoch=self.state.epoch + 1, step=self.state.step)
            if not self.writer:
                raise Interrupted(f"rank {self.ranks.rank}: stopped by {name} {where} with every rank; "
                                  "rank 0 saved the checkpoint", signum)
            raise Interrupted(f"stopped by {name} {where}; checkpoint saved to "
                              f"{self.files.checkpoint}; continue with: {self.resume_hint}", signum)
        if self.save_every and time.monotonic() - self._last_save >= self.save_every * 60:
            self.save(best=False)
            self._last_save = time.monotonic()

    def save(self, best: bool) -> None:
        """The latest checkpoint, and ``BEST_`` too when ``best`` (only the writing process saves)."""
        if not self.writer:
            return
        checkpoint = self.snapshot()
        run = run_name_of_feed(self.files.feed)
        save_checkpoint(self.files.checkpoint, checkpoint, run)  # each with its metadata sidecar
        if best:
            save_checkpoint(self.files.best, checkpoint, run)

    def _on_signal(self, signum, _frame) -> None:
        self.stop_signal = signum
        signal.signal(signum, signal.SIG_DFL)  # a second signal ends the process at once
