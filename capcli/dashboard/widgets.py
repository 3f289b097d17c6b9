"""The dashboard's small parts: the help screen, the path box with its completion, a panel that
says when its size changes and the attention heat map in half-blocks."""

from __future__ import annotations

import glob
import os

import numpy as np
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import ModalScreen
from textual.suggester import Suggester
from textual.widgets import Input, Static

from capcli.dashboard.messages import Resized

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


class SizedStatic(Static):
    """A panel whose parent draws it to its size: it says when that changes (:class:`Resized`)."""

    def on_resize(self) -> None:
        self.post_message(Resized(self))


def complete_path(value: str) -> str | None:
    """``value`` completed to the first file system path it begins (a directory with a trailing
    slash), as typed (``~`` stays); None when no path begins with it."""
    if not value:
        return None
    matches = sorted(glob.glob(os.path.expanduser(value) + "*"))
    if not matches:
        return None
    match = matches[0] + ("/" if os.path.isdir(matches[0]) else "")
    return value + match[len(os.path.expanduser(value)):]


class PathSuggester(Suggester):
    """Completes file system paths (the first match, directories with a trailing slash)."""

    def __init__(self) -> None:
        super().__init__(use_cache=False, case_sensitive=True)

    async def get_suggestion(self, value: str) -> str | None:
        return complete_path(value)


class PathInput(Input):
    """The image path box: Tab accepts the completion shown after the cursor (the suggester's,
    :func:`complete_path`)."""

    BINDINGS = [Binding("tab", "complete", "Complete", show=False)]

    def action_complete(self) -> None:
        completed = complete_path(self.value)
        if completed and len(completed) > len(self.value):
            self.value = completed
            self.cursor_position = len(self.value)


class HelpScreen(ModalScreen):
    BINDINGS = [Binding("escape,q,question_mark", "app.pop_screen", "Close")]
    DEFAULT_CSS = """
    HelpScreen { align: center middle; }
    #help { width: 74; height: auto; border: round $accent; background: $panel; padding: 1 2; }
    """

    def compose(self) -> ComposeResult:
        yield Static(HELP, id="help")
