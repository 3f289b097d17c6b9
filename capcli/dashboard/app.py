"""``capcli dashboard``: a Textual app that follows a run's metrics feed (and, to compare, a
second run's), shows its state, throughput, charts, sample captions and checkpoints, and answers
caption queries with a per-word attention heat map drawn in the terminal.

Under 120 columns it keeps the 80 × 24 layout (one chart at a time); from 120 columns it shows
the run list, 2 × 2 charts, the sample captions and a caption panel whose heat map grows with it
(``dashboard.tcss``). The app composes the panels (``views``, ``charts``, ``query``) and follows
the runs: its worker threads read the feeds, the run states and the checkpoints, and post what they
found (``messages``); the app keeps the followed runs' figures and passes the news on to the
panels, each of which keeps and draws what it shows. It calls the same services as the CLI
(``runs``, ``captioning``). Invalid feed lines are skipped by the reader (and counted in the run
panel); an unexpected error anywhere in the dashboard's code ends the app with return code 1, its
traceback in ``{output_folder}/dashboard_error.log`` and ``error_message`` saying so in one line
(``crash``).
"""

from __future__ import annotations

import os
from dataclasses import replace
from functools import partial

from rich.console import Console
from textual import work
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.widget import Widget
from textual.widgets import Footer, Header
from textual.worker import Worker, WorkerState

from capcli.dashboard.charts import CHARTS, WIDE, Charts
from capcli.dashboard.checkpoints import CheckpointReader
from capcli.dashboard.crash import crash_message, guarded
from capcli.dashboard.follow import Follower
from capcli.dashboard.messages import (
    CheckpointChosen,
    CheckpointsListed,
    FeedPolled,
    FollowedChanged,
    RunFound,
    RunsListed,
    RunUpdated,
)
from capcli.dashboard.query import CaptionQuery
from capcli.dashboard.runlist import RunsScreen
from capcli.dashboard.views import CheckpointList, RunPanel, RunsPanel, SamplesPanel
from capcli.dashboard.widgets import HelpScreen
from capcli.paths import run_feeds
from capcli.text import visible


class Dashboard(App):
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
        self.runs_listed = False  # a listing with runs arrived: the state worker need not send the followed first
        self.checkpoint_reader = CheckpointReader(output_folder)
        self.panels: tuple[Widget, ...] = ()  # every panel, in compose: the app passes the news on to them
        self.error_message: str | None = None  # set by an unexpected error: one line, where its traceback is

    # --- layout ------------------------------------------------------------------------------

    def compose(self) -> ComposeResult:
        self.run_panel = RunPanel(self.output_folder, self.stale_seconds, id="run")
        self.runs_panel = RunsPanel(id="runs")
        self.checkpoint_list = CheckpointList(id="checkpoints")
        self.charts = Charts(id="charts")
        self.samples = SamplesPanel(id="samples")
        self.caption_query = CaptionQuery(self.output_folder, id="query")
        self.panels = (self.run_panel, self.runs_panel, self.checkpoint_list, self.charts, self.samples,
                       self.caption_query)
        yield Header()
        with Horizontal(id="top"):
            yield from (self.run_panel, self.runs_panel, self.checkpoint_list)
        with Horizontal(id="bottom"):
            with Vertical(id="left"):
                yield from (self.charts, self.samples)
            yield self.caption_query
        yield Footer()

    @guarded
    def on_mount(self) -> None:
        self.poll_feed()
        self.poll_states()
        self.refresh_checkpoints()
        for seconds, job in ((self.poll_seconds, self.poll_feed), (self.state_seconds, self.poll_states),
                             (self.checkpoint_seconds, self.refresh_checkpoints)):
            self.set_interval(seconds, partial(self.when_open, job))

    def _open(self) -> bool:
        """Neither exiting (q, an error) nor shutting down."""
        return self.is_running and self.return_code is None

    @guarded
    def when_open(self, job) -> None:
        """A timer's tick: ``job()`` unless the app is closing (a timer may tick while it shuts down)."""
        if self._open():
            job()

    def broadcast(self, message: Message) -> None:
        """Pass ``message`` (a dataclass that does not bubble) on to every panel: a copy each, as a
        message belongs to one queue. A panel without a handler for it lets it go."""
        for panel in self.panels:
            panel.post_message(replace(message))

    # --- the followed runs -----------------------------------------------------------------------

    def follow(self, name: str) -> None:
        """Follow run ``name`` from its first line (it stops being the compared run)."""
        if self.main is not None and self.main.name == name:
            return
        self.main = Follower(self.output_folder, name)
        if self.compared is not None and self.compared.name == name:
            self.compared = None
        self.followed_changed()
        self.poll_feed()
        self.poll_states()

    def followed_changed(self) -> None:
        self.broadcast(FollowedChanged(self.main, self.compared))

    # --- worker threads: read the run folder, post what they found -------------------------------

    def _newest_run(self) -> str | None:
        if self.run_name:
            return self.run_name
        feeds = run_feeds(self.output_folder)  # waits while there is none
        return max(feeds, key=lambda n: os.path.getmtime(feeds[n])) if feeds else None

    @work(thread=True, exclusive=True, group="feed")
    def poll_feed(self) -> None:
        if self.main is None:
            name = self._newest_run()
            if name is not None:
                self.post_message(RunFound(name))
            return
        reads, more = [], False
        for follower in (self.main, self.compared):
            if follower is None:
                continue
            try:
                polled = follower.poll()
            except OSError as exc:
                self.notify(visible(f"reading the metrics feed: {exc}"), severity="error", markup=False)
                continue
            if polled is not None and follower.changed(polled):
                reads.append((follower, polled))
            more = more or bool(polled and polled.more)
        if reads or more:
            self.post_message(FeedPolled(reads, more))

    @work(thread=True, exclusive=True, group="states")
    def poll_states(self) -> None:
        """The run list and the state (running, finished, stopped, crashed) of the followed runs:
        both from ``capcli.runs.summary.run_info``, as ``capcli runs`` lists them."""
        from capcli.runs.summary import list_runs, run_info

        followed = {f.name: run_info(self.output_folder, f.name).state for f in (self.main, self.compared) if f}
        if followed and not self.runs_listed:  # the first time: the followed run's state before the whole list
            self.post_message(RunsListed([], followed))
        runs = list_runs(self.output_folder) if os.path.isdir(self.output_folder) else []
        self.post_message(RunsListed(runs, {**followed, **{run.name: run.state for run in runs}}))

    @work(thread=True, group="checkpoints")
    def refresh_checkpoints(self) -> None:
        read = self.checkpoint_reader.read()
        if read is None:
            return  # the previous reading is still going
        found, problems = read
        for problem in problems:
            self.notify(visible(problem), severity="error", markup=False)
        self.post_message(CheckpointsListed(found))

    # --- what they found: the app keeps the followed runs' figures, the panels the rest ---------

    @guarded
    def on_run_found(self, message: RunFound) -> None:
        if self._open():
            self.follow(message.name)

    @guarded
    def on_feed_polled(self, message: FeedPolled) -> None:
        for follower, polled in message.reads:
            if follower is not self.main and follower is not self.compared:
                continue  # read before a switch of runs
            if polled.reset and follower.lines:
                self.notify(f"{visible(follower.name)}: the metrics file was truncated or replaced: starting over",
                            severity="warning", markup=False)
            follower.apply(polled)
            self.broadcast(RunUpdated(follower))
        if message.more and self._open():  # a long feed is read a bounded piece at a time: the next piece at once
            self.poll_feed()

    @guarded
    def on_runs_listed(self, message: RunsListed) -> None:
        for follower in (self.main, self.compared):
            if follower is not None and follower.name in message.states:
                follower.state = message.states[follower.name]
        self.runs_listed = bool(message.runs)
        self.broadcast(message)

    @guarded
    def on_checkpoints_listed(self, message: CheckpointsListed) -> None:
        self.broadcast(message)

    @guarded
    def on_checkpoint_chosen(self, message: CheckpointChosen) -> None:
        self.checkpoint_list.chosen = message.path

    # --- keys ----------------------------------------------------------------------------------

    def action_chart(self, key: str) -> None:
        self.query_one("#left").remove_class("show-samples")
        self.charts.show_chart(key)

    def action_samples(self) -> None:
        self.query_one("#left").toggle_class("show-samples")

    def action_runs(self) -> None:
        self.push_screen(RunsScreen(self.runs_panel.runs, self.main and self.main.name,
                                    self.compared and self.compared.name), self.chose_run)

    @guarded
    def chose_run(self, choice: tuple[str, str] | None) -> None:
        if choice is None:
            return
        what, name = choice
        if what == "follow":
            self.follow(name)
        elif what == "uncompare" or (self.main is not None and name == self.main.name):
            self.compared = None
            self.followed_changed()
        else:
            self.compared = Follower(self.output_folder, name)
            self.followed_changed()
            self.poll_feed()
            self.poll_states()

    def action_help(self) -> None:
        self.push_screen(HelpScreen())

    def action_focus_path(self) -> None:
        self.caption_query.focus_path()

    def action_leave_path(self) -> None:
        self.set_focus(None)

    def action_word(self, delta: int) -> None:
        self.caption_query.next_word(delta)

    def action_beam(self) -> None:
        self.caption_query.next_beam()

    def action_checkpoint(self) -> None:
        self.caption_query.next_checkpoint()

    def action_refresh_checkpoints(self) -> None:
        self.checkpoint_reader.retry()  # r: try every file again
        self.refresh_checkpoints()

    # --- unexpected errors -----------------------------------------------------------------------

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        if event.state == WorkerState.ERROR:  # Textual ends the app (the workers exit on error)
            self.crashed(event.worker.error)

    async def run_action(self, action, default_namespace=None, namespaces=None) -> bool:
        """As :meth:`App.run_action` (every key runs one); an error in the action is reported by
        :meth:`crashed` before Textual ends the app."""
        try:
            return await super().run_action(action, default_namespace, namespaces)
        except Exception as error:
            self.crashed(error)
            raise

    def crashed(self, error: BaseException) -> None:
        """An unexpected error (the first one is the cause; any later one follows from it): its
        traceback to the log, ``error_message`` in one line, return code 1. Textual ends the app
        when the error reaches it; it would print the traceback with its locals on the terminal
        then, which the log has replaced, so its error console is silenced."""
        if self.error_message is None:
            self.error_message = crash_message(self.output_folder, error)
            self.error_console = Console(stderr=True, quiet=True)
        self.exit(return_code=1)

    def exit(self, result=None, return_code: int = 0, message=None) -> None:
        """As :meth:`App.exit`, but never with return code 0 once an error happened."""
        super().exit(result, 1 if self.error_message is not None else return_code, message)
