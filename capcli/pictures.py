"""The caption pictures (Pillow only): image with caption, attention per word, and generated vs
original captions; :func:`write_pictures` is the one writer `capcli caption` and the demo share.

Attention (one weight per encoder pixel, 14 × 14) is upsampled smoothly to the image size and
blended over the image as a heat map, one panel per word with the word as its title.
"""

from __future__ import annotations

import math
import os
import textwrap
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from capcli.paths import picture_file
from capcli.safeio import atomic_write

if TYPE_CHECKING:
    from capcli.captioning import CaptionResult

PANEL = 224
_BACKGROUND = (255, 255, 255)
_TEXT = (20, 20, 20)
# heat-map ramp from no attention to the most attention: dark blue, purple, red, orange, yellow
_RAMP = np.array([[20, 20, 90], [110, 30, 140], [210, 50, 70], [250, 150, 40], [255, 240, 120]], dtype=np.float32)


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # a Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def _save(img: Image.Image, path: str) -> str:
    with atomic_write(path) as f:  # never through a symlink at ``path``; never a half-written PNG
        img.save(f, format="PNG")
    return path


def _panel(pixels: np.ndarray, size: int = PANEL) -> Image.Image:
    return Image.fromarray(pixels).resize((size, size), Image.BICUBIC)


def upsample_attention(weights: torch.Tensor | np.ndarray, size: int) -> np.ndarray:
    """One word's attention (num_pixels,) → (size, size) in [0, 1], smoothly upsampled."""
    weights = np.asarray(weights, dtype=np.float32)
    side = int(round(math.sqrt(weights.size)))
    grid = weights.reshape(side, side)
    grid = (grid - grid.min()) / (grid.max() - grid.min() + 1e-12)
    return np.clip(np.asarray(Image.fromarray(grid, mode="F").resize((size, size), Image.BICUBIC)), 0, 1)


def heat_colours(values: np.ndarray) -> np.ndarray:
    """Values in [0, 1] (any shape) → RGB floats (…, 3) along the heat ramp."""
    position = np.clip(values, 0, 1) * (len(_RAMP) - 1)
    low = np.floor(position).astype(int).clip(0, len(_RAMP) - 2)
    frac = (position - low)[..., None]
    return _RAMP[low] * (1 - frac) + _RAMP[low + 1] * frac


def blend_attention(pixels: np.ndarray, weights, size: int = PANEL, strength: float = 0.6) -> Image.Image:
    """The image (S, S, 3) uint8 with one word's attention drawn over it."""
    base = np.asarray(_panel(pixels, size), dtype=np.float32)
    heat = upsample_attention(weights, size)
    out = base * (1 - strength) + heat_colours(heat) * strength
    return Image.fromarray(out.clip(0, 255).astype(np.uint8))


def _text_block(lines: list[str], width: int, size: int = 16) -> Image.Image:
    font = _font(size)
    wrapped = [w for line in lines for w in (textwrap.wrap(line, max(10, width // (size // 2 + 1))) or [""])]
    line_height = size + 6
    block = Image.new("RGB", (width, 10 + line_height * len(wrapped)), _BACKGROUND)
    draw = ImageDraw.Draw(block)
    for i, line in enumerate(wrapped):
        draw.text((8, 5 + i * line_height), line, fill=_TEXT, font=font)
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


def attention_picture(pixels: np.ndarray, words: list[str], attention, path: str, columns: int = 5) -> str:
    """``attention_visualization.png``: the image, then one panel per word with its attention."""
    panels = [("(image)", _panel(pixels))]
    panels += [(word, blend_attention(pixels, attention[i])) for i, word in enumerate(words)]
    columns = min(columns, len(panels))
    rows = math.ceil(len(panels) / columns)
    title_height = 26
    sheet = Image.new("RGB", (columns * (PANEL + 8) + 8, rows * (PANEL + title_height + 8) + 8), _BACKGROUND)
    draw, font = ImageDraw.Draw(sheet), _font(18)
    for i, (word, panel) in enumerate(panels):
        x = 8 + (i % columns) * (PANEL + 8)
        y = 8 + (i // columns) * (PANEL + title_height + 8)
        draw.text((x + 4, y + 2), word, fill=_TEXT, font=font)
        sheet.paste(panel, (x, y + title_height))
    return _save(sheet, path)


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
                   originals: dict[str, list[str]] | None = None, name_each: bool = False) -> dict[str, list[str]]:
    """Write ``caption_result.png``, ``attention_visualization.png`` (``attention``, where the decoder
    has attention) and ``caption_comparison.png`` (images with ``originals``, keyed by file name) for
    every captioned image; with several images (or ``name_each``) each name gets the image's
    (``caption_result_dog.png``). Returns the paths written per image."""
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
            paths.append(attention_picture(r.pixels, r.words, r.attention, path("attention_visualization", r.image)))
        references = originals.get(os.path.basename(r.image))
        if references:
            paths.append(comparison_picture(r.pixels, r.caption, references, path("caption_comparison", r.image)))
    return written
