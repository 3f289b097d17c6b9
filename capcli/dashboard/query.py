"""The dashboard's checkpoint rows and caption queries, a part of :class:`~capcli.dashboard.app.Dashboard`
(a mixin, so that each file stays small): the rows come from the metadata sidecars (a worker
thread reads them); a query captions an image with the chosen checkpoint and beam size in a
worker thread, and ``b`` / ``c`` caption the last image again with the next beam size or
checkpoint. Only the newest query's answer is shown."""

from __future__ import annotations

import os
import threading
import time
from functools import partial

from textual import work
from textual.widgets import Input, Static

from capcli.dashboard.checkpoints import CheckpointInfo, read_checkpoint_info
from capcli.dashboard.panels import caption_text, checkpoint_rows, literal
from capcli.dashboard.widgets import heatmap_text
from capcli.paths import a2c_files, checkpoint_files, is_best, train_files
from capcli.text import visible

BEAMS = (1, 3, 5, 10)


class QueryPanel:
    """Checkpoints and caption queries; :class:`Dashboard` calls :meth:`_init_queries` and owns
    ``output_folder``, ``main`` and ``_later``."""

    def _init_queries(self) -> None:
        self.checkpoints: dict[str, CheckpointInfo] = {}
        self.checkpoint_lock = threading.Lock()  # one reading of the checkpoints at a time
        self.unreadable: dict[str, float | None] = {}  # checkpoint path → mtime when it could not be read
        self.chosen: str | None = None  # the checkpoint path queries use
        self.beam = 3
        self.query_image: str | None = None  # the last image asked about: b and c caption it again
        self.query_number = 0  # only the newest query's answer is shown
        self.caption_for: tuple[str, str, int] | None = None  # (image, checkpoint, beam) of the shown caption
        self.caption_result = None
        self.word_index = 0
        self.captioners: dict[str, tuple[float, object]] = {}  # path → (mtime, model): one per file

    # --- checkpoints ---------------------------------------------------------------------------

    @work(thread=True, group="checkpoints")
    def refresh_checkpoints(self) -> None:
        if not self.checkpoint_lock.acquire(blocking=False):
            return  # the previous reading is still going (a checkpoint without sidecar takes a while)
        try:
            found = self._read_checkpoints()
        finally:
            self.checkpoint_lock.release()
        self._later(self._apply_checkpoints, found)

    def _read_checkpoints(self) -> dict[str, CheckpointInfo]:
        found = {}
        for path in checkpoint_files(self.output_folder):
            mtime = None
            try:
                mtime = os.path.getmtime(path)
                known = self.checkpoints.get(path)
                if self.unreadable.get(path) != mtime:  # a file that failed is tried again once rewritten
                    found[path] = known if known and known.mtime == mtime else read_checkpoint_info(path, mtime)
            except Exception as exc:  # a strange file is reported once, never fatal to the app
                self.unreadable[path] = mtime
                self._later(partial(self.notify, visible(f"{os.path.basename(path)}: {exc}"), severity="error",
                                    markup=False))
        return found

    def action_refresh_checkpoints(self) -> None:
        self.unreadable.clear()  # r: try every file again
        self.refresh_checkpoints()

    def _run_checkpoints(self, name: str) -> list[str]:
        """The run's checkpoint paths, the BEST ones first (train's, then A2C's)."""
        train, a2c = train_files(self.output_folder, name), a2c_files(self.output_folder, name)
        return [train.best, a2c.best, train.checkpoint, a2c.checkpoint]

    def _apply_checkpoints(self, found: dict[str, CheckpointInfo]) -> None:
        self.checkpoints = found
        if self.chosen not in found:  # nothing chosen yet, another run, or the file went away: the run's BEST
            mine = [p for p in self._run_checkpoints(self.main.name) if p in found] if self.main else []
            best = [p for p in found if is_best(p)]
            self.chosen = (mine or best or list(found) or [None])[0]
            if self.caption_for is not None and self.chosen is not None:
                self._query_again()  # the caption shown came from another checkpoint
        self._show_checkpoints()
        self._show_settings()

    def _show_checkpoints(self) -> None:
        panel = self.query_one("#checkpoints", Static)
        title, rows = checkpoint_rows(list(self.checkpoints.values()), self.chosen,
                                      panel.content_size.width or 36, time.time())
        panel.border_title = title
        panel.update(rows)

    def _show_settings(self) -> None:
        chosen = self.chosen
        self.query_one("#settings", Static).update(
            f"model {literal(os.path.basename(chosen)) if chosen else '–'}\nbeam {self.beam} (b)  model (c)")

    def action_checkpoint(self) -> None:
        paths = list(self.checkpoints)
        if paths:
            self.chosen = paths[(paths.index(self.chosen) + 1) % len(paths)] if self.chosen in paths else paths[0]
            self._show_settings()
            self._show_checkpoints()
            self._query_again()

    def action_beam(self) -> None:
        self.beam = BEAMS[(BEAMS.index(self.beam) + 1) % len(BEAMS)] if self.beam in BEAMS else BEAMS[0]
        self._show_settings()
        self._query_again()

    # --- caption queries -----------------------------------------------------------------------

    def on_input_submitted(self, event: Input.Submitted) -> None:
        path = event.value.strip()
        if path:
            self.query_image = os.path.expanduser(path)
            self.set_focus(None)  # out of the box: ← → step through the words, b c l work at once
            self._query_again()

    def _query_again(self) -> None:
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
            self._later(self._caption_failed, number, str(exc) or type(exc).__name__)
            return
        if result.error:
            self._later(self._caption_failed, number, result.error)
        else:
            self._later(self._show_caption, number, result, (image, checkpoint, beam))

    def _caption_failed(self, number: int, message: str) -> None:
        if number == self.query_number:
            self.query_one("#caption", Static).update("query failed (see the notification)")
            self.query_one("#path", Input).focus()  # back in the box to correct the path
        self.notify(visible(message), severity="error", timeout=8, markup=False)

    def _show_caption(self, number: int, result, settings: tuple[str, str, int]) -> None:
        if number != self.query_number:
            return  # an older query finished after a newer one started
        self.caption_result, self.caption_for, self.word_index = result, settings, 0
        self._draw_word()

    def _draw_word(self) -> None:
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

    def action_word(self, delta: int) -> None:
        if self.caption_result is not None and self.caption_result.words:
            self.word_index = (self.word_index + delta) % len(self.caption_result.words)
            self._draw_word()
