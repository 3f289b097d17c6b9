"""The caption panel (:class:`CaptionQuery`): a query captions an image with the chosen checkpoint
and beam size in a worker thread, and shows the caption with a per-word attention heat map;
``b`` / ``c`` caption the last image again with the next beam size or checkpoint, ← → step through
the words. Only the newest query's answer is shown."""

from __future__ import annotations

import os

from textual import work
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import Input, Static

from capcli.dashboard.checkpoints import run_checkpoints
from capcli.dashboard.crash import guarded
from capcli.dashboard.messages import (
    CaptionAnswered,
    CaptionFailed,
    CheckpointChosen,
    CheckpointsListed,
    FollowedChanged,
    Resized,
)
from capcli.dashboard.panels import caption_text, literal
from capcli.dashboard.widgets import PathInput, PathSuggester, SizedStatic, heatmap_text
from capcli.paths import is_best
from capcli.text import visible

BEAMS = (1, 3, 5, 10)


class CaptionQuery(Vertical):
    """The path box, the settings (checkpoint, beam size), the caption and its heat map. Owns the
    query settings (the checkpoint paths listed and the one chosen among them: the followed run's
    BEST first), the last image asked about, the answer shown and the loaded models."""

    BORDER_TITLE = "Caption query"

    def __init__(self, output_folder: str, **kwargs) -> None:
        super().__init__(**kwargs)
        self.output_folder = output_folder
        self.paths: list[str] = []  # the checkpoints in the run folder, as listed
        self.run_name: str | None = None  # the followed run
        self.chosen: str | None = None  # the checkpoint path queries use
        self.beam = 3
        self.query_image: str | None = None  # the last image asked about: b and c caption it again
        self.query_number = 0  # only the newest query's answer is shown
        self.caption_for: tuple[str, str, int] | None = None  # (image, checkpoint, beam) of the shown caption
        self.caption_result = None
        self.word_index = 0
        self.captioners: dict[str, tuple[float, object]] = {}  # path → (mtime, model): one per file

    def compose(self) -> ComposeResult:
        yield PathInput(placeholder="image path (i)", id="path", suggester=PathSuggester())
        yield Static("", id="settings")
        yield Static("type a path and press enter", id="caption")
        yield SizedStatic("", id="heatmap")

    @guarded
    def on_mount(self) -> None:
        self.show_settings()

    # --- the checkpoint and the beam size ------------------------------------------------------

    @guarded
    def on_checkpoints_listed(self, message: CheckpointsListed) -> None:
        self.paths = list(message.found)
        self.choose()

    @guarded
    def on_followed_changed(self, message: FollowedChanged) -> None:
        name = message.main.name if message.main else None
        if name != self.run_name:  # another run followed (not only compared): its own checkpoint first
            self.run_name = name
            if name is not None and self.chosen not in run_checkpoints(self.output_folder, name):
                self.chosen = None
        self.choose()

    def choose(self) -> None:
        """Keep the chosen checkpoint while it is listed; else the followed run's BEST (or any
        BEST, or any checkpoint), with which a caption shown is made again."""
        if self.chosen not in self.paths:
            mine = [p for p in run_checkpoints(self.output_folder, self.run_name)
                    if p in self.paths] if self.run_name else []
            best = [p for p in self.paths if is_best(p)]
            self.chosen = (mine or best or self.paths or [None])[0]
            self.post_message(CheckpointChosen(self.chosen))
            if self.caption_for is not None and self.chosen is not None:
                self.query_again()  # the caption shown came from another checkpoint
        self.show_settings()

    def next_checkpoint(self) -> None:
        """Key c: query with the next checkpoint listed."""
        paths = self.paths
        if paths:
            self.chosen = paths[(paths.index(self.chosen) + 1) % len(paths)] if self.chosen in paths else paths[0]
            self.post_message(CheckpointChosen(self.chosen))
            self.show_settings()
            self.query_again()

    def next_beam(self) -> None:
        """Key b: query with the next beam size."""
        self.beam = BEAMS[(BEAMS.index(self.beam) + 1) % len(BEAMS)] if self.beam in BEAMS else BEAMS[0]
        self.show_settings()
        self.query_again()

    def show_settings(self) -> None:
        chosen = self.chosen
        self.query_one("#settings", Static).update(
            f"model {literal(os.path.basename(chosen)) if chosen else '–'}\nbeam {self.beam} (b)  model (c)")

    # --- queries -------------------------------------------------------------------------------

    def focus_path(self) -> None:
        self.query_one("#path", Input).focus()

    @guarded
    def on_input_submitted(self, event: Input.Submitted) -> None:
        path = event.value.strip()
        if path:
            self.query_image = os.path.expanduser(path)
            self.app.set_focus(None)  # out of the box: ← → step through the words, b c l work at once
            self.query_again()

    def query_again(self) -> None:
        """Caption the last image asked about with the current checkpoint and beam size."""
        if self.query_image is None:
            return
        if self.chosen is None:
            self.notify("no checkpoint in the run folder yet", severity="error")
            return
        self.query_number += 1
        self.query_one("#caption", Static).update(f"captioning with beam {self.beam}…")
        self.caption_query(self.query_number, self.query_image, self.chosen, self.beam)

    @work(thread=True, group="caption")
    def caption_query(self, number: int, image: str, checkpoint: str, beam: int) -> None:
        from capcli.inference.captioning import caption_files, load_captioner

        try:
            mtime = os.path.getmtime(checkpoint)
            cached = self.captioners.get(checkpoint)
            if cached is None or cached[0] != mtime:  # a rewritten checkpoint replaces its old model
                self.captioners[checkpoint] = (mtime, load_captioner(checkpoint))
            result = caption_files(self.captioners[checkpoint][1], [image], beam_size=beam)[0]
        except Exception as exc:  # any failure is a notification; the app keeps running
            self.post_message(CaptionFailed(number, str(exc) or type(exc).__name__))
            return
        if result.error:
            self.post_message(CaptionFailed(number, result.error))
        else:
            self.post_message(CaptionAnswered(number, result, (image, checkpoint, beam)))

    @guarded
    def on_caption_failed(self, message: CaptionFailed) -> None:
        if message.number == self.query_number:
            self.query_one("#caption", Static).update("query failed (see the notification)")
            self.focus_path()  # back in the box to correct the path
        self.notify(visible(message.text), severity="error", timeout=8, markup=False)

    @guarded
    def on_caption_answered(self, message: CaptionAnswered) -> None:
        if message.number != self.query_number:
            return  # an older query finished after a newer one started
        self.caption_result, self.caption_for, self.word_index = message.result, message.settings, 0
        self.draw_word()

    # --- the caption and its heat map ----------------------------------------------------------

    @guarded
    def on_resized(self, message: Resized) -> None:
        self.draw_word()  # the heat map's size changed

    def next_word(self, delta: int) -> None:
        """Keys ← →: the previous or next word's attention."""
        if self.caption_result is not None and self.caption_result.words:
            self.word_index = (self.word_index + delta) % len(self.caption_result.words)
            self.draw_word()

    def draw_word(self) -> None:
        r = self.caption_result
        if r is None:
            return
        words = r.words or []
        heat = self.query_one("#heatmap", Static)
        marked = caption_text(words, self.word_index, 2 * max(heat.size.width, 20) - 4)  # two lines, or three
        self.query_one("#caption", Static).update(f"{marked}\nscore {r.score:.2f}  word {self.word_index + 1}/"
                                                  f"{len(words)} (← →)")
        weights = r.attention[self.word_index] if r.attention is not None and words else None
        rows = max(heat.size.height, 4)
        columns = max(heat.size.width, 8)
        # a cell holds two pixels stacked and is about twice as tall as wide: 2 columns per row is square
        heat.update(heatmap_text(r.pixels, weights, min(columns, 2 * rows), rows))
