"""The dashboard's parts that are not the app: the help screen, the path box, panels that say
when their size changes, the attention heat map in half-blocks and the error log."""

from __future__ import annotations

import glob
import os
import tempfile
import time
import traceback

import numpy as np
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Container
from textual.message import Message
from textual.screen import ModalScreen
from textual.suggester import Suggester
from textual.widget import Widget
from textual.widgets import Input, Static

from capcli import safeio

ERROR_LOG = "dashboard_error.log"

HELP = """\
[b]capcli dashboard — keys[/b]

  1 2 3 4 5 6  chart: loss, top-5, BLEU-4, A2C, CIDEr-D, loss per step
               (120+ columns show four: 2 and 4 pick the fourth)
  s            sample captions in place of the chart (under 120 columns)
  l            run list: enter follows a run, m compares it
  i            type an image path (Tab completes)
  enter        caption it (in the path box)
  escape       leave the path box
  ← →          previous / next word (heat map)
  b            next beam size (1, 3, 5, 10); captions again
  c            next checkpoint; captions again
  r            re-read checkpoints now
  ?            this help (escape closes it)
  q            quit
"""


def heatmap_text(pixels: np.ndarray, weights, width: int, height: int, strength: float = 0.65) -> Text:
    """The image downscaled to ``width`` × ``2·height`` with the attention blended over it, drawn
    with upper half-blocks (foreground = top pixel, background = bottom pixel)."""
    from PIL import Image

    from capcli.inference.heatmap import heat_colours, per_word_fractions, upsample_attention

    rows = height * 2
    base = np.asarray(Image.fromarray(pixels).resize((width, rows), Image.BILINEAR), dtype=np.float32)
    if weights is not None:
        heat = per_word_fractions(upsample_attention(weights, 64))  # one word at a time: its own min-max
        heat = np.asarray(Image.fromarray(heat).resize((width, rows), Image.BILINEAR))
        base = base * (1 - strength) + heat_colours(heat) * strength
    rgb = base.clip(0, 255).astype(int)
    text = Text()
    for y in range(0, rows, 2):
        for x in range(width):
            top, bottom = rgb[y, x], rgb[y + 1, x]
            text.append("▀", style=f"rgb({top[0]},{top[1]},{top[2]}) on rgb({bottom[0]},{bottom[1]},{bottom[2]})")
        if y + 2 < rows:
            text.append("\n")
    return text


def write_error_log(folder: str, error: BaseException) -> str:
    """Write the traceback of ``error`` to ``folder``/dashboard_error.log, or to a new temporary
    file when that folder is missing or not writable; returns the file's path.

    Raises:
        OSError: not even a temporary file could be written.
    """
    text = f"capcli dashboard, {time.strftime('%Y-%m-%d %H:%M:%S')}\n" + "".join(traceback.format_exception(error))
    if os.path.isdir(folder):
        path = os.path.join(folder, ERROR_LOG)
        try:
            with safeio.atomic_write(path, text=True) as f:
                f.write(text)
            return path
        except OSError:
            pass  # a folder this user may only read: the temporary file below instead
    fd, path = tempfile.mkstemp(prefix="capcli-dashboard-", suffix=".log")
    with open(fd, "w", encoding="utf-8") as f:
        f.write(text)
    return path


class Resized(Message):
    """A :class:`SizedStatic` or :class:`SizedContainer` changed size (``widget``): what it shows
    may depend on its size (the heat map, checkpoint names, which charts a layout has)."""

    def __init__(self, widget: Widget) -> None:
        super().__init__()
        self.widget = widget


class SizedStatic(Static):
    def on_resize(self) -> None:
        self.post_message(Resized(self))


class SizedContainer(Container):
    def on_resize(self) -> None:
        self.post_message(Resized(self))


class PathSuggester(Suggester):
    """Completes file system paths (the first match, directories with a trailing slash)."""

    def __init__(self) -> None:
        super().__init__(use_cache=False, case_sensitive=True)

    async def get_suggestion(self, value: str) -> str | None:
        if not value:
            return None
        matches = sorted(glob.glob(os.path.expanduser(value) + "*"))
        if not matches:
            return None
        match = matches[0] + ("/" if os.path.isdir(matches[0]) else "")
        return value + match[len(os.path.expanduser(value)):]


class PathInput(Input):
    """The image path box: Tab accepts the completion shown after the cursor."""

    BINDINGS = [Binding("tab", "complete", "Complete", show=False)]

    def action_complete(self) -> None:
        if self._suggestion and len(self._suggestion) > len(self.value):
            self.value = self._suggestion
            self.cursor_position = len(self.value)


class HelpScreen(ModalScreen):
    BINDINGS = [Binding("escape,q,question_mark", "app.pop_screen", "Close")]
    DEFAULT_CSS = """
    HelpScreen { align: center middle; }
    #help { width: 74; height: auto; border: round $accent; background: $panel; padding: 1 2; }
    """

    def compose(self) -> ComposeResult:
        yield Static(HELP, id="help")
