"""The dashboard's text panels as widgets: the followed run, the run list, the sample captions and
the checkpoint rows. Each keeps what it shows, takes it from the messages the app passes on
(``capcli.dashboard.messages``) and draws its text with ``capcli.dashboard.panels``."""

from __future__ import annotations

import time

from textual.reactive import var
from textual.widgets import Static

from capcli.dashboard.checkpoints import CheckpointInfo, run_checkpoints
from capcli.dashboard.crash import guarded
from capcli.dashboard.follow import Follower
from capcli.dashboard.messages import CheckpointsListed, FollowedChanged, RunsListed, RunUpdated
from capcli.dashboard.panels import RUNS_TITLE, checkpoint_rows, literal, run_row, run_text, samples_text
from capcli.paths import feed_pattern


class FollowsRuns:
    """A panel that shows the followed run (and the compared one): it keeps both from
    :class:`FollowedChanged` and draws itself again (``show``) when they change or take new figures."""

    main: Follower | None = None
    compared: Follower | None = None

    def show(self) -> None:
        raise NotImplementedError

    @guarded
    def on_followed_changed(self, message: FollowedChanged) -> None:
        self.main, self.compared = message.main, message.compared
        self.show()

    @guarded
    def on_run_updated(self, message: RunUpdated) -> None:
        if message.follower is self.main or message.follower is self.compared:
            self.show()


class RunPanel(FollowsRuns, Static):
    """The followed run: name, stage, state, epoch, best scores, throughput, ETA (``run_text``).
    Owns the followed and compared runs and the checkpoints that give a feed without a start line
    its number of epochs; redraws every second, as ages and staleness move with the clock."""

    BORDER_TITLE = "Run"

    def __init__(self, output_folder: str, stale_seconds: float, **kwargs) -> None:
        super().__init__("waiting for the metrics feed…", **kwargs)
        self.output_folder, self.stale_seconds = output_folder, stale_seconds
        self.checkpoints: dict[str, CheckpointInfo] = {}

    @guarded
    def on_mount(self) -> None:
        self.set_interval(1.0, self.tick)

    @guarded
    def tick(self) -> None:
        self.show()

    @guarded
    def on_runs_listed(self, message: RunsListed) -> None:
        self.show()  # the app has set the followed runs' states

    @guarded
    def on_checkpoints_listed(self, message: CheckpointsListed) -> None:
        self.checkpoints = message.found

    def total_epochs(self) -> int | None:
        """From the feed's start line; for feeds without one, from the run's newest loaded checkpoint."""
        s = self.main.summary
        stage_kind = "a2c" if s.stage == "a2c" else "train"
        if s.total_epochs.get(stage_kind):
            return s.total_epochs[stage_kind]
        mine = run_checkpoints(self.output_folder, self.main.name)
        infos = [c for c in self.checkpoints.values() if c.path in mine and c.stage == stage_kind and c.total_epochs]
        return max(infos, key=lambda c: c.mtime).total_epochs if infos else None

    def show(self) -> None:
        f = self.main
        if f is None or not f.exists or not f.lines:
            self.update(f"waiting for {literal(f.path if f else feed_pattern(self.output_folder))}…")
            return
        self.update(run_text(f, self.total_epochs(), self.compared.name if self.compared else None,
                             self.stale_seconds, self.content_size.width or 36))


class RunsPanel(FollowsRuns, Static):
    """Every run in the folder with its state (shown from 120 columns; key l lists them too),
    marking the followed and compared runs. Owns the latest listing."""

    BORDER_TITLE = RUNS_TITLE

    def __init__(self, **kwargs) -> None:
        super().__init__("no runs yet", **kwargs)
        self.runs: list = []  # capcli.runs.summary.RunInfo of every run in the folder

    @guarded
    def on_runs_listed(self, message: RunsListed) -> None:
        self.runs = message.runs
        self.show()

    def show(self) -> None:
        current, compared = (f.name if f else None for f in (self.main, self.compared))
        rows = [run_row(r, current, compared) for r in self.runs]
        self.update("\n".join(rows) or "no runs yet")


class SamplesPanel(FollowsRuns, Static):
    """The validation samples of the followed run's latest epoch."""

    BORDER_TITLE = "Sample captions"

    def __init__(self, **kwargs) -> None:
        super().__init__("", **kwargs)

    @guarded
    def on_mount(self) -> None:
        self.show()

    def show(self) -> None:
        f = self.main
        self.update(samples_text(f.samples if f else [], f and f.samples_epoch))


class CheckpointList(Static):
    """A row per checkpoint in the run folder, ``▸`` marking the one the caption panel uses
    (``chosen``, which the app sets). Owns the rows; names are cut to the panel's width."""

    BORDER_TITLE = "Checkpoints"
    chosen: var[str | None] = var(None)

    def __init__(self, **kwargs) -> None:
        super().__init__("no checkpoints yet", **kwargs)
        self.checkpoints: dict[str, CheckpointInfo] = {}

    @guarded
    def on_checkpoints_listed(self, message: CheckpointsListed) -> None:
        self.checkpoints = message.found
        self.show()

    @guarded
    def on_resize(self) -> None:
        self.show()

    def watch_chosen(self) -> None:
        self.show()

    def show(self) -> None:
        title, rows = checkpoint_rows(list(self.checkpoints.values()), self.chosen,
                                      self.content_size.width or 36, time.time())
        self.border_title = title
        self.update(rows)
