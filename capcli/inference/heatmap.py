"""Attention heat maps for the pictures and the dashboard: upsampling, the colour scale, the
colour ramp and its legend (numpy, Pillow and scikit-image; no matplotlib).

Each word's attention is a grid of weights over the encoder pixels (14 × 14, summing to 1). It
is upsampled as the seed does, with scikit-image's ``pyramid_expand``: bilinear upsampling, then
a Gaussian blur with σ a third of the upscale factor (the seed's 24× with σ 8), so the encoder's
cells do not show as blocks.

The colour scale is by default one for every word of a caption, from 0 to the highest
(upsampled) weight over the whole caption: a word that looks at one spot then shows brighter
than one that spreads its attention, which scaling each word to its own min-max hides. The top
is at least 4 × the uniform weight (1/196 a cell), so a model that attends nowhere in
particular (an untrained one) shows flat and dim rather than flat and glowing. (A fixed 0..1
would leave nearly every map dark: peaks seldom pass 0.3.) ``per_word`` scales each map to its
own min-max instead, to see the shape of a flat map.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFont

# Nine evenly spaced samples of the "inferno" colour map (Nathaniel Smith and Stéfan van der
# Walt, CC0), interpolated linearly: perceptually uniform, and its lightness rises from black to
# pale yellow, so it reads in grey and over any image.
_RAMP = np.array([[0, 0, 4], [33, 12, 74], [87, 16, 110], [138, 34, 106], [188, 55, 84], [228, 90, 49],
                  [249, 142, 9], [249, 203, 53], [252, 255, 164]], dtype=np.float32)
_TEXT = (20, 20, 20)
_BACKGROUND = (255, 255, 255)
_EPSILON = 1e-12
_LEAST_TOP = 4.0  # the shared scale's top is at least this many times the uniform weight
_ALPHA_LOW, _ALPHA_HIGH = 0.15, 0.85  # the ramp's cover over the image at no and at the most attention
_KEEP_COLOUR = 0.15  # how much of the image's own colour stays under the ramp
_LEGEND_GREY = 128.0  # the legend shows the ramp as it looks over a mid-grey image


def font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # a Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def attention_array(attention) -> np.ndarray:
    """Attention as float32 numpy, from a tensor of any dtype or device (bfloat16 under autocast)
    or an array."""
    if hasattr(attention, "detach"):  # a torch.Tensor, without importing torch here
        attention = attention.detach().float().cpu().numpy()
    return np.asarray(attention, dtype=np.float32)


def attention_grid(weights) -> np.ndarray:
    """One word's attention, (num_pixels,) weights, as its square (side, side) grid."""
    weights = attention_array(weights)
    side = int(round(math.sqrt(weights.size)))
    if side * side != weights.size:
        raise ValueError(f"attention over {weights.size} pixels is not a square grid")
    return weights.reshape(side, side)  # (encoded_size, encoded_size)


def upsample_attention(weights, size: int) -> np.ndarray:
    """One word's attention (num_pixels,) → (size, size) float32 in the same units (weight per
    encoder cell), upsampled and smoothed with ``pyramid_expand``; a size the grid does not
    divide is met by resizing the expanded map."""
    from skimage.transform import pyramid_expand  # only here: scikit-image takes a while to import

    grid = attention_grid(weights)
    upscale = size / grid.shape[0]
    heat = grid
    if upscale > 1:  # pyramid_expand only enlarges
        heat = pyramid_expand(grid, upscale=upscale, sigma=upscale / 3, preserve_range=True)
    if heat.shape != (size, size):  # (ceil(upscale · side),) * 2 when size / side is not whole
        heat = np.asarray(Image.fromarray(heat.astype(np.float32), mode="F").resize((size, size), Image.BILINEAR))
    return np.clip(heat, 0, None).astype(np.float32)


def per_word_fractions(heat: np.ndarray) -> np.ndarray:
    """One map scaled to its own min-max, [0, 1]."""
    return (heat - heat.min()) / (heat.max() - heat.min() + _EPSILON)


@dataclass(frozen=True)
class ColourScale:
    """How attention values map onto the ramp: 0 .. ``high`` for every word, or each word's own
    min-max (``per_word``)."""

    high: float
    per_word: bool = False
    side: int | None = None  # the encoder's grid: side × side cells

    @classmethod
    def for_maps(cls, maps: list[np.ndarray], num_pixels: int, per_word: bool = False) -> ColourScale:
        """The scale for one caption's upsampled maps of attention over ``num_pixels`` encoder
        pixels: 0 .. their highest value, or 4 × the uniform weight 1 / ``num_pixels`` if higher."""
        side = math.isqrt(num_pixels)
        return cls(max([_LEAST_TOP / num_pixels] + [float(m.max()) for m in maps]), per_word,
                   side if side * side == num_pixels else None)

    def fractions(self, heat: np.ndarray) -> np.ndarray:
        """Values → positions on the ramp, [0, 1]."""
        if self.per_word:
            return per_word_fractions(heat)
        return np.clip(heat / (self.high + _EPSILON), 0, 1)

    @property
    def title(self) -> str:
        cells = f" ({self.side} x {self.side} cells)" if self.side else ""  # the legend font may lack ×
        if self.per_word:
            return f"attention over the encoder's grid{cells}, each word scaled to its own min-max"
        return f"attention weight per encoder cell{cells}, one scale for all words"

    def ticks(self) -> list[tuple[float, str]]:
        """(position on the ramp, label) for the legend."""
        if self.per_word:
            return [(0.0, "word's min"), (0.5, ""), (1.0, "word's max")]
        if self.high <= 0:
            return [(0.0, "0")]
        step = _nice_step(self.high / 4)
        decimals = max(0, -math.floor(math.log10(step)))
        values = [i * step for i in range(int(self.high / step + 1e-9) + 1)]
        return [(v / self.high, f"{v:.{decimals}f}") for v in values]


def _nice_step(rough: float) -> float:
    """1, 2 or 5 × a power of ten, at least ``rough``."""
    power = 10.0 ** math.floor(math.log10(rough))
    return next(m * power for m in (1, 2, 5, 10) if m * power >= rough * (1 - 1e-9))


def heat_colours(values: np.ndarray) -> np.ndarray:
    """Positions in [0, 1] (any shape) → RGB floats (…, 3) along the ramp."""
    position = np.clip(values, 0, 1) * (len(_RAMP) - 1)
    low = np.floor(position).astype(int).clip(0, len(_RAMP) - 2)
    frac = (position - low)[..., None]
    return _RAMP[low] * (1 - frac) + _RAMP[low + 1] * frac


def overlay_alpha(fractions: np.ndarray) -> np.ndarray:
    """How much of the ramp's colour covers the image at each position: little where attention is
    low, so the image shows through, most at the peak."""
    return _ALPHA_LOW + (_ALPHA_HIGH - _ALPHA_LOW) * np.clip(fractions, 0, 1)


def blend(image: np.ndarray, fractions: np.ndarray) -> np.ndarray:
    """The image (H, W, 3) uint8, partly greyed so its own colours do not compete with the ramp's,
    under the ramp's colours for ``fractions`` (H, W); float RGB (H, W, 3)."""
    rgb = image.astype(np.float32)
    grey = rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32)  # (H, W) luma
    base = _KEEP_COLOUR * rgb + (1 - _KEEP_COLOUR) * grey[..., None]
    alpha = overlay_alpha(fractions)[..., None]  # (H, W, 1)
    return base * (1 - alpha) + heat_colours(fractions) * alpha


def legend(scale: ColourScale, width: int, size: int = 14) -> Image.Image:
    """A colour bar ``width`` wide (the ramp as drawn over a mid-grey image) with tick labels under
    it and the scale's title above."""
    text_font, bar_height, margin = font(size), 16, 36
    bar_width = width - 2 * margin
    width = max(width, margin + math.ceil(text_font.getlength(scale.title)) + 8)  # the title whole
    picture = Image.new("RGB", (width, size * 2 + bar_height + 24), _BACKGROUND)
    draw = ImageDraw.Draw(picture)
    draw.text((margin, 2), scale.title, fill=_TEXT, font=text_font)
    top = size + 8
    positions = np.linspace(0, 1, bar_width, dtype=np.float32)
    alpha = overlay_alpha(positions)[:, None]  # (bar_width, 1)
    ramp = _LEGEND_GREY * (1 - alpha) + heat_colours(positions) * alpha  # (bar_width, 3)
    bar = np.broadcast_to(ramp[None], (bar_height, bar_width, 3)).clip(0, 255).astype(np.uint8)
    picture.paste(Image.fromarray(np.ascontiguousarray(bar)), (margin, top))
    draw.rectangle((margin - 1, top - 1, margin + bar_width, top + bar_height), outline=_TEXT)
    for position, label in scale.ticks():
        x = margin + round(position * (bar_width - 1))
        draw.line((x, top + bar_height, x, top + bar_height + 4), fill=_TEXT)
        if label:
            text_width = draw.textlength(label, font=text_font)
            left = min(max(x - text_width / 2, 0), width - text_width)
            draw.text((left, top + bar_height + 6), label, fill=_TEXT, font=text_font)
    return picture
