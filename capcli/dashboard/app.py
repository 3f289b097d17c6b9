"""``capcli dashboard``: a Textual app that follows a run's metrics feed, lists its checkpoints
and answers caption queries with a per-word attention heat map drawn in the terminal.

All file reading and inference happen in thread workers; the UI thread only applies results.
It calls the same services as the CLI (``runs``, ``captioning``). Invalid feed lines are skipped
by the reader (and counted in the run panel); an unexpected error anywhere ends the app with
return code 1, its traceback in ``{output_folder}/dashboard_error.log`` and ``error_message``
saying so in one line.
"""

from __future__ import annotations

import os
import threading
import time

from textual import work
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.markup import escape
from textual.widgets import Footer, Header, Input, Static
from textual.worker import WorkerFailed
from textual_plotext import PlotextPlot

from capcli.dashboard.widgets import (
    ERROR_LOG,
    HELP,
    CheckpointInfo,
    HelpScreen,
    PathInput,
    PathSuggester,
    age_text,
    downsample,
    heatmap_text,
    read_checkpoint_info,
    write_error_log,
)
from capcli.metrics import CHARTS as METRIC_CHARTS
from capcli.metrics import best_label, best_text
from capcli.paths import checkpoint_files, checkpoint_stem, feed_file, feed_pattern, is_best, run_name_of_feed
from capcli.runs import FeedTail, RunSummary, run_feeds, summarize

__all__ = ["ERROR_LOG", "HELP", "Dashboard", "HelpScreen", "downsample"]

BEAMS = (1, 3, 5, 10)
CHARTS = {str(i + 1): (title, series) for i, (title, _, series) in enumerate(METRIC_CHARTS)}  # key 1-5



class Dashboard(App):
    TITLE = "capcli dashboard"
    AUTO_FOCUS = None  # keys drive the app until the user presses i for the path box
    CSS = """
    #top { height: 8; }
    #run, #checkpoints { width: 1fr; border: round $primary; padding: 0 1; }
    #bottom { height: 1fr; }
    #chart { width: 1fr; border: round $primary; min-height: 8; }
    #query { width: 36; border: round $primary; }
    #path { height: 1; border: none; padding: 0; }
    #settings, #caption { height: auto; }
    #heatmap { height: 1fr; }
    """
    BINDINGS = [
        Binding("q", "quit", "Quit"),
        Binding("question_mark", "help", "Help"),
        Binding("i", "focus_path", "Image"),
        Binding("escape", "leave_path", "Leave box", show=False),
        Binding("left", "word(-1)", "Word ←", show=False),
        Binding("right", "word(1)", "Word →", show=False),
        Binding("b", "beam", "Beam"),
        Binding("c", "checkpoint", "Ckpt"),
        Binding("r", "refresh_checkpoints", "Reload", show=False),
        *[Binding(k, f"chart('{k}')", CHARTS[k][0], show=False) for k in CHARTS],
    ]

    def __init__(self, output_folder: str = "model_outputs", name: str | None = None, poll_seconds: float = 0.5,
                 stale_seconds: float = 120.0, checkpoint_seconds: float = 5.0) -> None:
        super().__init__()
        self.output_folder, self.run_name = output_folder, name
        self.poll_seconds, self.stale_seconds, self.checkpoint_seconds = poll_seconds, stale_seconds, checkpoint_seconds
        self.tail: FeedTail | None = None
        self.lines: list[dict] = []
        self.feed_exists = False
        self.summary = RunSummary()
        self.chart_key = "1"
        self.checkpoints: dict[str, CheckpointInfo] = {}
        self.chosen: str | None = None  # the checkpoint path queries use
        self.beam = 3
        self.caption_result = None
        self.word_index = 0
        self.captioners: dict[str, tuple[float, object]] = {}  # path → (mtime, model): one per file
        self.poll_lock = threading.Lock()
        self.skipped = 0  # invalid feed lines the reader skipped
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

    # --- layout ------------------------------------------------------------------------------

    def compose(self) -> ComposeResult:
        yield Header()
        with Horizontal(id="top"):
            yield Static("waiting for the metrics feed…", id="run")
            yield Static("no checkpoints yet", id="checkpoints")
        with Horizontal(id="bottom"):
            yield PlotextPlot(id="chart")
            with Vertical(id="query"):
                yield PathInput(placeholder="image path (i)", id="path", suggester=PathSuggester())
                yield Static("", id="settings")
                yield Static("type a path and press enter", id="caption")
                yield Static("", id="heatmap")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#run").border_title = "Run"
        self.query_one("#checkpoints").border_title = "Checkpoints"
        self.query_one("#chart").border_title = f"Chart (1-{len(CHARTS)})"
        self.query_one("#query").border_title = "Caption query"
        self._show_settings()
        self._draw_chart()
        self.poll_feed()
        self.refresh_checkpoints()
        self.set_interval(self.poll_seconds, self.poll_feed)
        self.set_interval(self.checkpoint_seconds, self.refresh_checkpoints)
        self.set_interval(1.0, self._show_run)  # ages and staleness move with the clock

    # --- the feed (worker thread reads, UI thread applies) ---------------------------------------

    def _feed_path(self) -> str | None:
        if self.run_name:
            return feed_file(self.output_folder, self.run_name)
        feeds = run_feeds(self.output_folder)  # waits while there is none (or several: the CLI says so)
        return next(iter(feeds.values())) if len(feeds) == 1 else None

    @work(thread=True, exclusive=True, group="feed")
    def poll_feed(self) -> None:
        if not self.poll_lock.acquire(blocking=False):
            return  # the previous read is still going
        try:
            if self.tail is None:
                path = self._feed_path()
                if path is None:
                    return
                self.tail = FeedTail(path)
            new = self.tail.poll()
            reset, exists, skipped = self.tail.reset, self.tail.exists, self.tail.skipped
        except OSError as exc:
            self.call_from_thread(self.notify, f"reading the metrics feed: {exc}", severity="error", markup=False)
            return
        finally:
            self.poll_lock.release()
        if new or reset or not exists or skipped != self.skipped:
            self.call_from_thread(self._apply_lines, new, reset, exists, skipped)

    def _apply_lines(self, new: list[dict], reset: bool, exists: bool, skipped: int = 0) -> None:
        if reset:
            self.lines = []
            self.notify("the metrics file was truncated or replaced: starting over", severity="warning")
        self.lines.extend(new)
        self.skipped = skipped
        self.summary = summarize(self.lines, skipped)
        self.feed_exists = exists
        self._show_run()
        self._draw_chart()

    def _total_epochs(self) -> int | None:
        """From the feed's start line; for feeds without one, from the newest checkpoint."""
        stage_kind = "a2c" if self.summary.stage == "a2c" else "train"
        if self.summary.total_epochs.get(stage_kind):
            return self.summary.total_epochs[stage_kind]
        infos = [c for c in self.checkpoints.values() if c.kind == stage_kind and c.total_epochs]
        return max(infos, key=lambda c: c.mtime).total_epochs if infos else None

    def _show_run(self) -> None:
        panel = self.query_one("#run", Static)
        s = self.summary
        path = self.tail.path if self.tail else None
        if path is None or not self.feed_exists or not self.lines:
            where = path or feed_pattern(self.output_folder)
            panel.update(f"waiting for {escape(where)}…")
            return
        age = time.time() - (s.last_time or time.time())
        state = f"ended: {escape(s.ended)}" if s.ended else ("stale" if age > self.stale_seconds else "live")
        epoch = (s.a2c or {}).get("epoch", 0) if s.stage == "a2c" else s.epochs_done
        lr = s.last.get("lr")
        per_epoch = f"{s.mean_epoch_seconds:.0f}s" if s.mean_epoch_seconds else "–"
        total = self._total_epochs()
        eta = "–"
        if total and s.mean_epoch_seconds and not s.ended:
            eta = age_text(max(total - (epoch or 0), 0) * s.mean_epoch_seconds)
        lines = [f"{escape(run_name_of_feed(path))}  [b]{escape(s.stage or '?')}[/b]  {state}",
                 f"epoch {epoch or 0}{f'/{total}' if total else ''}  step {s.last_step}",
                 f"best {escape(best_label(s))} {escape(best_text(s, '(epoch {})', ', {} {}'))}",
                 f"lr {'–' if lr is None else f'{lr:.2e}'}  per epoch {per_epoch}",
                 f"ETA {eta}  last update {age_text(age)} ago"]
        if s.skipped:
            lines.append(f"[$warning]skipped {s.skipped} invalid feed line(s)[/]")
        panel.update("\n".join(lines))

    def _draw_chart(self) -> None:
        chart = self.query_one("#chart", PlotextPlot)
        title, series = CHARTS[self.chart_key]
        plt = chart.plt
        plt.clear_figure()
        plt.title(title)
        plt.xlabel("epoch")
        drawn = False
        if self.chart_key == "1" and len(self.summary.series.get("train_loss", [])) < 2:
            series = [("step_loss", "train, per step")]  # until there are two epochs to draw
            plt.xlabel("step")
        for key, label in series:
            points = downsample(self.summary.series.get(key, []))
            if points:
                xs, ys = zip(*points)
                plt.plot(list(xs), list(ys), label=label, marker="braille")
                drawn = True
        if not drawn:
            plt.title(f"{title}: no data yet")
        chart.border_title = f"Chart {self.chart_key}/{len(CHARTS)}: {title}"
        chart.refresh()

    # --- checkpoints ---------------------------------------------------------------------------

    @work(thread=True, exclusive=True, group="checkpoints")
    def refresh_checkpoints(self) -> None:
        found = {}
        for path in checkpoint_files(self.output_folder):
            try:
                mtime = os.path.getmtime(path)
                known = self.checkpoints.get(path)
                found[path] = known if known and known.mtime == mtime else read_checkpoint_info(path, mtime)
            except Exception as exc:  # a strange file is reported, never fatal to the app
                self.call_from_thread(self.notify, f"{os.path.basename(path)}: {exc}", severity="error",
                                      markup=False)
        self.call_from_thread(self._apply_checkpoints, found)

    def action_refresh_checkpoints(self) -> None:
        self.refresh_checkpoints()

    def _apply_checkpoints(self, found: dict[str, CheckpointInfo]) -> None:
        self.checkpoints = found
        if self.chosen not in found:  # nothing chosen yet, or the file went away: prefer a BEST model
            best = [p for p in found if is_best(p)]
            self.chosen = (best or list(found) or [None])[0]
        now = time.time()
        rows = [f"{escape(checkpoint_stem(c.path)[:19]):<19} e{c.epoch:<3}"
                f"{'–' if c.bleu4 is None else f'{c.bleu4:.3f}':>5} {age_text(now - c.mtime):>4}"
                for c in found.values()]
        self.query_one("#checkpoints", Static).update("\n".join(rows) or "no checkpoints yet")
        self._show_settings()

    def _show_settings(self) -> None:
        chosen = self.chosen
        self.query_one("#settings", Static).update(
            f"model {escape(os.path.basename(chosen)) if chosen else '–'}\nbeam {self.beam} (b)  model (c)")

    def action_checkpoint(self) -> None:
        paths = list(self.checkpoints)
        if paths:
            self.chosen = paths[(paths.index(self.chosen) + 1) % len(paths)] if self.chosen in paths else paths[0]
            self._show_settings()

    def action_beam(self) -> None:
        self.beam = BEAMS[(BEAMS.index(self.beam) + 1) % len(BEAMS)] if self.beam in BEAMS else BEAMS[0]
        self._show_settings()

    # --- caption queries -----------------------------------------------------------------------

    def on_input_submitted(self, event: Input.Submitted) -> None:
        path = event.value.strip()
        if not path:
            return
        checkpoint = self.chosen
        if checkpoint is None:
            self.notify("no checkpoint in the run folder yet", severity="error")
            return
        self.query_one("#caption", Static).update(f"captioning with beam {self.beam}…")
        self.caption_query(os.path.expanduser(path), checkpoint, self.beam)

    @work(thread=True, exclusive=True, group="caption")
    def caption_query(self, image: str, checkpoint: str, beam: int) -> None:
        from capcli.captioning import caption_files, load_captioner

        try:
            mtime = os.path.getmtime(checkpoint)
            cached = self.captioners.get(checkpoint)
            if cached is None or cached[0] != mtime:  # a rewritten checkpoint replaces its old model
                self.captioners[checkpoint] = (mtime, load_captioner(checkpoint))
            result = caption_files(self.captioners[checkpoint][1], [image], beam_size=beam)[0]
        except Exception as exc:  # any failure is a notification; the app keeps running
            self.call_from_thread(self._caption_failed, str(exc) or type(exc).__name__)
            return
        if result.error:
            self.call_from_thread(self._caption_failed, result.error)
        else:
            self.call_from_thread(self._show_caption, result)

    def _caption_failed(self, message: str) -> None:
        self.query_one("#caption", Static).update("query failed (see the notification)")
        self.notify(message, severity="error", timeout=8, markup=False)

    def _show_caption(self, result) -> None:
        self.caption_result, self.word_index = result, 0
        self._draw_word()

    def _draw_word(self) -> None:
        r = self.caption_result
        if r is None:
            return
        words = r.words or []
        marked = " ".join(f"[reverse]{escape(w)}[/reverse]" if i == self.word_index else escape(w)
                          for i, w in enumerate(words))
        self.query_one("#caption", Static).update(f"{marked}\nscore {r.score:.2f}  word {self.word_index + 1}/"
                                                  f"{len(words)} (← →)")
        heat = self.query_one("#heatmap", Static)
        weights = r.attention[self.word_index] if r.attention is not None and words else None
        rows = max(heat.size.height, 4)
        columns = max(self.query_one("#query").content_size.width, 8)
        # a cell holds two pixels stacked and is about twice as tall as wide: 2 columns per row is square
        heat.update(heatmap_text(r.pixels, weights, min(columns, 2 * rows), rows))

    def action_word(self, delta: int) -> None:
        if self.caption_result is not None and self.caption_result.words:
            self.word_index = (self.word_index + delta) % len(self.caption_result.words)
            self._draw_word()

    # --- other keys ----------------------------------------------------------------------------

    def action_chart(self, key: str) -> None:
        self.chart_key = key
        self._draw_chart()

    def action_help(self) -> None:
        self.push_screen(HelpScreen())

    def action_focus_path(self) -> None:
        self.query_one("#path", Input).focus()

    def action_leave_path(self) -> None:
        self.set_focus(None)
