"""``capcli dashboard``: a Textual app that follows a run's metrics feed (and, to compare, a
second run's), shows its state, throughput, charts, sample captions and checkpoints, and answers
caption queries with a per-word attention heat map drawn in the terminal.

Under 120 columns it keeps the 80 × 24 layout (one chart at a time); from 120 columns it shows
the run list, 2 × 2 charts, the sample captions and a caption panel whose heat map grows with it
(``dashboard.tcss``). All file reading and inference happen in thread workers; the UI thread
only applies results. It calls the same services as the CLI (``runs``, ``captioning``). Invalid
feed lines are skipped by the reader (and counted in the run panel); an unexpected error
anywhere ends the app with return code 1, its traceback in ``{output_folder}/dashboard_error.log``
and ``error_message`` saying so in one line.
"""

from __future__ import annotations

import os
from functools import partial

from textual import work
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.widgets import Footer, Header, Input, Static
from textual.worker import WorkerFailed
from textual_plotext import PlotextPlot

from capcli.dashboard.charts import CHARTS, downsample, draw_chart, narrow_chart, wide_charts
from capcli.dashboard.follow import Follower
from capcli.dashboard.panels import RUNS_TITLE, literal, run_row, run_text, samples_text
from capcli.dashboard.query import QueryPanel
from capcli.dashboard.runlist import RunsScreen
from capcli.dashboard.widgets import (
    ERROR_LOG,
    HELP,
    HelpScreen,
    PathInput,
    PathSuggester,
    Resized,
    SizedContainer,
    SizedStatic,
    write_error_log,
)
from capcli.paths import feed_pattern, run_feeds
from capcli.runs.summary import RunSummary
from capcli.text import visible

__all__ = ["ERROR_LOG", "HELP", "WIDE", "Dashboard", "HelpScreen", "downsample"]

WIDE = 120  # columns from which the wide layout shows


class Dashboard(QueryPanel, App):
    TITLE = "capcli dashboard"
    CSS_PATH = "dashboard.tcss"
    AUTO_FOCUS = None  # keys drive the app until the user presses i for the path box
    HORIZONTAL_BREAKPOINTS = [(0, "-narrow"), (WIDE, "-wide")]
    BINDINGS = [
        Binding("q", "quit", "Quit"),
        Binding("question_mark", "help", "Help"),
        Binding("i", "focus_path", "Image"),
        Binding("escape", "leave_path", "Leave box", show=False),
        Binding("left", "word(-1)", "Word ←", show=False),
        Binding("right", "word(1)", "Word →", show=False),
        Binding("b", "beam", "Beam"),
        Binding("c", "checkpoint", "Ckpt"),
        Binding("l", "runs", "Runs"),
        Binding("s", "samples", "Samples"),
        Binding("r", "refresh_checkpoints", "Reload", show=False),
        *[Binding(k, f"chart('{k}')", CHARTS[k].title, show=False) for k in CHARTS],
    ]

    def __init__(self, output_folder: str = "model_outputs", name: str | None = None, poll_seconds: float = 0.5,
                 stale_seconds: float = 120.0, checkpoint_seconds: float = 5.0, state_seconds: float = 2.0) -> None:
        super().__init__()
        self.output_folder, self.run_name = output_folder, name
        self.poll_seconds, self.stale_seconds = poll_seconds, stale_seconds
        self.checkpoint_seconds, self.state_seconds = checkpoint_seconds, state_seconds
        self.main: Follower | None = None  # the followed run (None until a feed is found)
        self.compared: Follower | None = None  # the run whose validation curves are laid over
        self.runs: list = []  # capcli.runs.summary.RunInfo of every run in the folder
        self.chart_key = "1"
        self._init_queries()
        self.error_message: str | None = None  # set by an unexpected error: one line, where its traceback is

    # --- unexpected errors -----------------------------------------------------------------------

    def _handle_exception(self, error: Exception) -> None:
        """Textual's hook for every unhandled error (a handler, a timer, a worker). Instead of a
        traceback of locals on the terminal: the traceback goes to a log file, ``error_message``
        says so in one line and the app exits with return code 1."""
        if self.error_message is None:  # the first error is the cause; any later one follows from it
            cause = error.error if isinstance(error, WorkerFailed) else error
            try:
                where = f"traceback in {write_error_log(self.output_folder, cause)}"
            except OSError as exc:
                where = f"no log written: {exc}"
            summary = (str(cause).strip().splitlines() or [""])[0]
            self.error_message = (f"the dashboard stopped on an unexpected error: {type(cause).__name__}"
                                  f"{': ' + summary if summary else ''} ({where})")
        if self._exception is None:  # as App._handle_exception: Pilot stops waiting, run_test re-raises it
            self._exception = error
            self._exception_event.set()
        self.exit(return_code=1)

    def exit(self, result=None, return_code: int = 0, message=None) -> None:
        """As :meth:`App.exit`, but never with return code 0 once an error happened."""
        super().exit(result, 1 if self.error_message is not None else return_code, message)

    def _later(self, callback, *args) -> None:
        """From a worker thread: ``callback(*args)`` on the UI thread, unless the app is closing
        (its widgets may be gone by then)."""
        if self._open():
            self.call_from_thread(self._unless_closing, callback, *args)

    def _unless_closing(self, callback, *args) -> None:
        if self._open():
            callback(*args)

    def _open(self) -> bool:
        """Neither exiting (q, an error) nor shutting down."""
        return self.is_running and self.return_code is None

    # --- layout ------------------------------------------------------------------------------

    def compose(self) -> ComposeResult:
        yield Header()
        with Horizontal(id="top"):
            yield Static("waiting for the metrics feed…", id="run")
            yield Static("no runs yet", id="runs")
            yield SizedStatic("no checkpoints yet", id="checkpoints")
        with Horizontal(id="bottom"):
            with Vertical(id="left"):
                with SizedContainer(id="charts"):
                    yield PlotextPlot(id="chart")
                    for i in (2, 3, 4):
                        yield PlotextPlot(id=f"chart{i}", classes="extra")
                yield Static("", id="samples")
            with Vertical(id="query"):
                yield PathInput(placeholder="image path (i)", id="path", suggester=PathSuggester())
                yield Static("", id="settings")
                yield Static("type a path and press enter", id="caption")
                yield SizedStatic("", id="heatmap")
        yield Footer()

    def on_mount(self) -> None:
        for selector, title in (("#run", "Run"), ("#runs", RUNS_TITLE), ("#checkpoints", "Checkpoints"),
                                ("#query", "Caption query"), ("#samples", "Sample captions")):
            self.query_one(selector).border_title = title
        self._show_settings()
        self._show_samples()
        self._draw_charts()
        self.poll_feed()
        self.poll_states()
        self.refresh_checkpoints()
        # a timer may tick while the app shuts down and its widgets go: each tick checks first
        self.set_interval(self.poll_seconds, partial(self._unless_closing, self.poll_feed))
        self.set_interval(self.state_seconds, partial(self._unless_closing, self.poll_states))
        self.set_interval(self.checkpoint_seconds, partial(self._unless_closing, self.refresh_checkpoints))
        # ages and staleness move with the clock
        self.set_interval(1.0, partial(self._unless_closing, self._show_run))

    @property
    def wide(self) -> bool:
        return self.size.width >= WIDE

    def on_resized(self, message: Resized) -> None:
        """A size-dependent panel changed size: redraw what it shows."""
        if message.widget.id == "heatmap":
            self._draw_word()
        elif message.widget.id == "checkpoints":
            self._show_checkpoints()
        elif message.widget.id == "charts":
            self._draw_charts()  # the layout may have changed: one chart or four

    # --- the feeds (worker thread reads, UI thread applies) --------------------------------------

    def _newest_run(self) -> str | None:
        if self.run_name:
            return self.run_name
        feeds = run_feeds(self.output_folder)  # waits while there is none
        return max(feeds, key=lambda n: os.path.getmtime(feeds[n])) if feeds else None

    @work(thread=True, exclusive=True, group="feed")
    def poll_feed(self) -> None:
        if self.main is None:
            name = self._newest_run()
            if name is None:
                return
            self._later(self._follow, name)
            return
        more = False
        for follower in (self.main, self.compared):
            if follower is None:
                continue
            try:
                polled = follower.poll()
            except OSError as exc:
                self._later(partial(self.notify, visible(f"reading the metrics feed: {exc}"), severity="error",
                                    markup=False))
                continue
            if polled is not None and follower.changed(polled):
                self._later(self._apply_lines, follower, polled)
            more = more or bool(polled and polled.more)
        if more:  # a long feed is read a bounded piece at a time: the next piece at once
            self._later(self.poll_feed)

    def _follow(self, name: str) -> None:
        """Follow run ``name`` from its first line (it stops being the compared run)."""
        if self.main is not None and self.main.name == name:
            return
        self.main = Follower(self.output_folder, name)
        if self.compared is not None and self.compared.name == name:
            self.compared = None
        self.chosen = None if self.chosen not in self._run_checkpoints(name) else self.chosen
        self._after_change()
        self.poll_feed()
        self.poll_states()

    def _after_change(self) -> None:
        self._show_run()
        self._show_runs()
        self._show_samples()
        self._draw_charts()
        self._apply_checkpoints(self.checkpoints)

    def _apply_lines(self, follower: Follower, polled) -> None:
        if follower is not self.main and follower is not self.compared:
            return  # read before a switch of runs
        if polled.reset and follower.lines:
            self.notify(f"{visible(follower.name)}: the metrics file was truncated or replaced: starting over",
                        severity="warning", markup=False)
        follower.apply(polled)
        if follower is self.main:
            self._show_run()
            self._show_samples()
        self._draw_charts()

    @work(thread=True, exclusive=True, group="states")
    def poll_states(self) -> None:
        """The run list and the state (running, finished, stopped, crashed) of the followed runs:
        both from ``capcli.runs.summary.run_info``, as ``capcli runs`` lists them."""
        from capcli.runs.summary import list_runs, run_info

        followed = {f.name: run_info(self.output_folder, f.name).state for f in (self.main, self.compared) if f}
        if followed and not self.runs:  # the first time: the followed run's state before the whole list
            self._later(self._apply_states, self.runs, followed)
        runs = list_runs(self.output_folder) if os.path.isdir(self.output_folder) else []
        self._later(self._apply_states, runs, {**followed, **{run.name: run.state for run in runs}})

    def _apply_states(self, runs: list, states: dict[str, str]) -> None:
        self.runs = runs
        for follower in (self.main, self.compared):
            if follower is not None and follower.name in states:
                follower.state = states[follower.name]
        self._show_run()
        self._show_runs()

    def _total_epochs(self) -> int | None:
        """From the feed's start line; for feeds without one, from the run's newest loaded checkpoint."""
        s = self.main.summary
        stage_kind = "a2c" if s.stage == "a2c" else "train"
        if s.total_epochs.get(stage_kind):
            return s.total_epochs[stage_kind]
        mine = self._run_checkpoints(self.main.name)
        infos = [c for c in self.checkpoints.values() if c.path in mine and c.stage == stage_kind and c.total_epochs]
        return max(infos, key=lambda c: c.mtime).total_epochs if infos else None

    def _show_run(self) -> None:
        panel = self.query_one("#run", Static)
        f = self.main
        if f is None or not f.exists or not f.lines:
            panel.update(f"waiting for {literal(f.path if f else feed_pattern(self.output_folder))}…")
            return
        panel.update(run_text(f, self._total_epochs(), self.compared.name if self.compared else None,
                              self.stale_seconds, panel.content_size.width or 36))

    def _show_runs(self) -> None:
        current = self.main.name if self.main else None
        compared = self.compared.name if self.compared else None
        rows = [run_row(r, current, compared) for r in self.runs]
        self.query_one("#runs", Static).update("\n".join(rows) or "no runs yet")

    def _show_samples(self) -> None:
        f = self.main
        self.query_one("#samples", Static).update(samples_text(f.samples if f else [], f and f.samples_epoch))

    def _draw_charts(self) -> None:
        summary = self.main.summary if self.main else RunSummary()
        compared = (self.compared.name, self.compared.summary) if self.compared else None
        if self.wide:
            for widget, spec in zip(self.query(PlotextPlot), wide_charts(self.chart_key, summary)):
                draw_chart(widget, spec, summary, compared)
                widget.border_title = spec.title
        else:
            chart = self.query_one("#chart", PlotextPlot)
            spec = narrow_chart(self.chart_key, summary)
            draw_chart(chart, spec, summary, compared)
            chart.border_title = f"Chart {self.chart_key}/{len(CHARTS)}: {spec.title}"

    # --- other keys ----------------------------------------------------------------------------

    def action_chart(self, key: str) -> None:
        self.chart_key = key
        self.query_one("#left").remove_class("show-samples")
        self._draw_charts()

    def action_samples(self) -> None:
        self.query_one("#left").toggle_class("show-samples")

    def action_runs(self) -> None:
        self.push_screen(RunsScreen(self.runs, self.main and self.main.name,
                                    self.compared and self.compared.name), self._chose_run)

    def _chose_run(self, choice: tuple[str, str] | None) -> None:
        if choice is None:
            return
        what, name = choice
        if what == "follow":
            self._follow(name)
        elif what == "uncompare" or (self.main is not None and name == self.main.name):
            self.compared = None
            self._after_change()
        else:
            self.compared = Follower(self.output_folder, name)
            self._after_change()
            self.poll_feed()
            self.poll_states()

    def action_help(self) -> None:
        self.push_screen(HelpScreen())

    def action_focus_path(self) -> None:
        self.query_one("#path", Input).focus()

    def action_leave_path(self) -> None:
        self.set_focus(None)
