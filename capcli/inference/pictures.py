"""The caption pictures (Pillow only): image with caption, attention per word, and generated vs
original captions; :func:`write_pictures` is the one writer `capcli caption` and the demo share.

The attention picture has a header (the caption, the image's name, the caption's score), the
image and one panel per word with the word's attention upsampled and drawn over it, and a colour
bar; :mod:`capcli.inference.heatmap` owns the upsampling, the colour scale and the legend.
"""

from __future__ import annotations

import math
import os
import textwrap
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageDraw

from capcli.inference.heatmap import ColourScale, attention_array, blend, font, legend, upsample_attention
from capcli.paths import picture_file
from capcli.safeio import atomic_write

if TYPE_CHECKING:
    from capcli.inference.captioning import CaptionResult

PANEL = 224
_GAP = 8
_TITLE_HEIGHT = 26
_BACKGROUND = (255, 255, 255)
_TEXT = (20, 20, 20)
_NOTE = (90, 90, 90)


def _save(img: Image.Image, path: str) -> str:
    with atomic_write(path) as f:  # never through a symlink at ``path``; never a half-written PNG
        img.save(f, format="PNG")
    return path


def _panel(pixels: np.ndarray, size: int = PANEL) -> Image.Image:
    return Image.fromarray(pixels).resize((size, size), Image.BICUBIC)


def _text_block(lines: list[str], width: int, size: int = 16, colour=_TEXT) -> Image.Image:
    text_font = font(size)
    wrapped = [w for line in lines for w in (textwrap.wrap(line, max(10, width // (size // 2 + 1))) or [""])]
    line_height = size + 6
    block = Image.new("RGB", (width, 10 + line_height * len(wrapped)), _BACKGROUND)
    draw = ImageDraw.Draw(block)
    for i, line in enumerate(wrapped):
        draw.text((8, 5 + i * line_height), line, fill=colour, font=text_font)
    return block


def _stack(*parts: Image.Image) -> Image.Image:
    width = max(p.width for p in parts)
    out = Image.new("RGB", (width, sum(p.height for p in parts)), _BACKGROUND)
    y = 0
    for p in parts:
        out.paste(p, (0, y))
        y += p.height
    return out


def caption_picture(pixels: np.ndarray, caption: str, path: str, score: float | None = None) -> str:
    """``caption_result.png``: the image with its generated caption under it."""
    image = _panel(pixels, 384)
    note = [caption] + ([f"(log-probability {score:.2f})"] if score is not None else [])
    return _save(_stack(image, _text_block(note, image.width, 18)), path)


def score_note(result: CaptionResult) -> str:
    """The image's name and the caption's score: the beam search's summed log-probability, and
    that per scored word (``<end>`` counts when the caption reached it)."""
    name = os.path.basename(result.image)
    if result.score is None:
        return name
    scored = len(result.words or []) + (1 if result.finished else 0)
    ending = "<end> included" if result.finished else "no <end> within the length limit"
    return (f"{name}    log-probability {result.score:.2f}, {result.score / max(scored, 1):.2f} per word "
            f"({ending})")


def word_panels(pixels: np.ndarray, attention, per_word: bool = False,
                size: int = PANEL) -> tuple[list[Image.Image], list[float], ColourScale]:
    """One panel per word, its attention over the image, all on one :class:`ColourScale` (or
    each on its own min-max with ``per_word``); also each map's peak and the scale."""
    attention = attention_array(attention)  # (words, num_pixels)
    maps = [upsample_attention(weights, size) for weights in attention]  # each (size, size)
    scale = ColourScale.for_maps(maps, attention.shape[1], per_word)
    base = np.asarray(_panel(pixels, size))
    panels = [Image.fromarray(blend(base, scale.fractions(heat)).clip(0, 255).astype(np.uint8)) for heat in maps]
    return panels, [float(heat.max()) for heat in maps], scale


def _grid(panels: list[tuple[str, str, Image.Image]], columns: int) -> Image.Image:
    """Panels with a title (left) and a note (right) above each, ``columns`` a row."""
    columns = min(columns, len(panels))
    rows = math.ceil(len(panels) / columns)
    step_x, step_y = PANEL + _GAP, PANEL + _TITLE_HEIGHT + _GAP
    sheet = Image.new("RGB", (columns * step_x + _GAP, rows * step_y), _BACKGROUND)
    draw, title_font, note_font = ImageDraw.Draw(sheet), font(18), font(13)
    for i, (title, note, panel) in enumerate(panels):
        x, y = _GAP + (i % columns) * step_x, (i // columns) * step_y
        draw.text((x + 2, y + 2), title, fill=_TEXT, font=title_font)
        if note:
            draw.text((x + PANEL - 2 - draw.textlength(note, font=note_font), y + 7), note, fill=_NOTE,
                      font=note_font)
        sheet.paste(panel, (x, y + _TITLE_HEIGHT))
    return sheet


def attention_picture(result: CaptionResult, path: str, per_word: bool = False, columns: int = 5) -> str:
    """``attention_visualization.png``: a header with the caption and its score, the image, one
    panel per word with its attention (one colour scale for all words, or each word's own
    min-max with ``per_word``), and the colour bar."""
    panels, peaks, scale = word_panels(result.pixels, result.attention, per_word)
    grid = _grid([("(image)", "", _panel(result.pixels))] +
                 [(word, f"peak {peak:.3f}", panel) for word, peak, panel in zip(result.words, peaks, panels)],
                 columns)
    header = _stack(_text_block([result.caption], grid.width, 22),
                    _text_block([score_note(result)], grid.width, 14, _NOTE))
    bar = legend(scale, min(grid.width, 2 * PANEL + 3 * _GAP))
    return _save(_stack(header, grid, bar), path)


def comparison_picture(pixels: np.ndarray, generated: str, references: list[str], path: str) -> str:
    """``caption_comparison.png``: the image, the generated caption and the original captions."""
    image = _panel(pixels, 384)
    lines = ["Generated:", f"  {generated}", "", "Original captions:"] + [f"  {i + 1}. {r}"
                                                                        for i, r in enumerate(references)]
    return _save(_stack(image, _text_block(lines, max(image.width, 560), 16)), path)


def picture_names(images: list[str]) -> dict[str, str]:
    """A distinct name part per image: its file stem, numbered when two images share one."""
    names, seen = {}, {}
    for image in images:
        stem = os.path.splitext(os.path.basename(image))[0]
        seen[stem] = seen.get(stem, 0) + 1
        names[image] = stem if seen[stem] == 1 else f"{stem}_{seen[stem]}"
    return names


def write_pictures(results: list[CaptionResult], folder: str, caption: bool = True, attention: bool = False,
                   originals: dict[str, list[str]] | None = None, name_each: bool = False,
                   per_word: bool = False) -> dict[str, list[str]]:
    """Write ``caption_result.png``, ``attention_visualization.png`` (``attention``, where the decoder
    has attention) and ``caption_comparison.png`` (images with ``originals``, keyed by file name) for
    every captioned image; with several images (or ``name_each``) each name gets the image's
    (``caption_result_dog.png``). ``per_word`` scales each word's attention to its own min-max
    (default: one colour scale for the whole caption). Returns the paths written per image."""
    originals = originals or {}
    good = [r for r in results if r.error is None]
    if not good or not (caption or attention or originals):
        return {}
    os.makedirs(folder, exist_ok=True)
    names = picture_names([r.image for r in results]) if name_each or len(results) > 1 else {}

    def path(kind: str, image: str) -> str:
        return picture_file(folder, kind, names.get(image))

    written: dict[str, list[str]] = {}
    for r in good:
        paths = written.setdefault(r.image, [])
        if caption:
            paths.append(caption_picture(r.pixels, r.caption, path("caption_result", r.image), r.score))
        if attention and r.attention is not None:
            paths.append(attention_picture(r, path("attention_visualization", r.image), per_word))
        references = originals.get(os.path.basename(r.image))
        if references:
            paths.append(comparison_picture(r.pixels, r.caption, references, path("caption_comparison", r.image)))
    return written
