"""The built-in ``shapes`` dataset: synthetic scenes with truthful, varied captions.

Each image holds 1–3 coloured shapes (6 colours, 4 shapes, 2 sizes) on a textured, non-white
background; each comes with 5 different captions stating colour, shape, size, count and
relative position. Images are rendered from ``(seed, index)`` alone, so the set is identical
whatever the number of worker processes. The set is written as a Karpathy-format JSON plus a
JPEG folder and then prepared like any real dataset.
"""

from __future__ import annotations

import math
import os
import random
from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image, ImageDraw

from capcli.safeio import atomic_write

GENERATOR_VERSION = 2
CANVAS = 256

COLOURS = {
    "red": (215, 35, 35), "green": (35, 165, 50), "blue": (35, 70, 215),
    "yellow": (240, 215, 30), "purple": (140, 45, 170), "orange": (245, 135, 25),
}
SHAPES = ("circle", "square", "triangle", "star")
SIZES = {"small": (15, 21), "large": (36, 46)}  # radius range in pixels on the 256 canvas

# Synonyms are few on purpose: variety comes from the sentence templates, and a caption a model
# cannot predict from the pixels (a random synonym) only lowers every score's ceiling.
SIZE_WORDS = {"small": ("small",), "large": ("large", "big")}
_RELATION_WORDS = {
    "left": ("left of", "to the left of"),
    "right": ("right of", "to the right of"),
    "above": ("above",),
    "below": ("below",),
}
_PICTURE_WORDS = ("image", "picture")
_BACKGROUND_WORDS = ("textured",)


@dataclass(frozen=True)
class Shape:
    colour: str
    shape: str
    size: str
    x: float
    y: float
    radius: float


def _texture(rng: np.random.Generator, size: int) -> np.ndarray:
    """A (size, size, 3) float background: muted base colour, a pattern and pixel noise."""
    hue = rng.uniform(0, 2 * math.pi)
    level = rng.uniform(95, 185)
    base = level + 28 * np.array([math.cos(hue), math.cos(hue + 2.1), math.cos(hue + 4.2)])
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    kind = rng.integers(4)
    if kind == 0:  # stripes at a random angle
        angle, freq = rng.uniform(0, math.pi), rng.uniform(6, 20)
        pattern = np.sin((xx * math.cos(angle) + yy * math.sin(angle)) * freq * 2 * math.pi)
    elif kind == 1:  # checkerboard
        cells = rng.integers(4, 12)
        pattern = ((np.floor(xx * cells) + np.floor(yy * cells)) % 2) * 2 - 1
    elif kind == 2:  # smooth gradient
        angle = rng.uniform(0, 2 * math.pi)
        pattern = (xx * math.cos(angle) + yy * math.sin(angle)) * 2 - 1
    else:  # low-frequency blotches
        coarse = rng.normal(size=(8, 8)).astype(np.float32)
        pattern = np.asarray(Image.fromarray(coarse).resize((size, size), Image.BICUBIC)) / 2
    amplitude = rng.uniform(8, 22)
    noise = rng.normal(0, 6, size=(size, size, 1))
    return base[None, None, :] + amplitude * pattern[..., None] + noise


def _place(rng: np.random.Generator, count: int) -> list[Shape] | None:
    """Random non-overlapping shapes whose pairwise relations are clear; None to retry."""
    shapes: list[Shape] = []
    kinds = set()
    for _ in range(count):
        colour = str(rng.choice(list(COLOURS)))
        shape = str(rng.choice(SHAPES))
        if (colour, shape) in kinds:
            return None
        kinds.add((colour, shape))
        size = str(rng.choice(list(SIZES)))
        radius = float(rng.uniform(*SIZES[size]))
        margin = radius + 6
        x, y = (float(v) for v in rng.uniform(margin, CANVAS - margin, size=2))
        for other in shapes:
            dx, dy = abs(x - other.x), abs(y - other.y)
            if math.hypot(dx, dy) < radius + other.radius + 10 or max(dx, dy) < 1.4 * min(dx, dy) + 12:
                return None
        shapes.append(Shape(colour, shape, size, x, y, radius))
    return shapes


def relation(a: Shape, b: Shape) -> str:
    """Where ``a`` is relative to ``b``: left, right, above or below (the dominant axis)."""
    dx, dy = a.x - b.x, a.y - b.y
    if abs(dx) >= abs(dy):
        return "left" if dx < 0 else "right"
    return "above" if dy < 0 else "below"


def _polygon(shape: str, x: float, y: float, r: float, turn: float) -> list[tuple[float, float]]:
    if shape == "square":
        s = r * 0.85
        return [(x - s, y - s), (x + s, y - s), (x + s, y + s), (x - s, y + s)]
    if shape == "triangle":
        return [(x + r * math.cos(turn + k * 2 * math.pi / 3 - math.pi / 2),
                 y + r * math.sin(turn + k * 2 * math.pi / 3 - math.pi / 2)) for k in range(3)]
    points = []  # five-pointed star
    for k in range(10):
        radius = r if k % 2 == 0 else r * 0.45
        angle = k * math.pi / 5 - math.pi / 2
        points.append((x + radius * math.cos(angle), y + radius * math.sin(angle)))
    return points


def render(seed: int, index: int) -> tuple[Image.Image, list[Shape]]:
    """The image and its shapes for ``(seed, index)``."""
    rng = np.random.default_rng([seed, index])
    count = int(rng.choice([1, 2, 3], p=[0.3, 0.4, 0.3]))
    shapes = None
    while shapes is None:
        shapes = _place(rng, count)
    pixels = np.clip(_texture(rng, CANVAS), 0, 235).astype(np.uint8)
    img = Image.fromarray(pixels, "RGB")
    draw = ImageDraw.Draw(img)
    for s in shapes:
        fill = tuple(int(np.clip(c + rng.integers(-15, 16), 0, 255)) for c in COLOURS[s.colour])
        if s.shape == "circle":
            draw.ellipse([s.x - s.radius, s.y - s.radius, s.x + s.radius, s.y + s.radius], fill=fill)
        else:
            turn = float(rng.uniform(-0.15, 0.15))
            draw.polygon(_polygon(s.shape, s.x, s.y, s.radius, turn), fill=fill)
    return img, shapes


def _noun_phrase(s: Shape, rng: random.Random, size: bool = True, det: str = "a") -> str:
    words = ([rng.choice(SIZE_WORDS[s.size])] if size else []) + [s.colour, s.shape]
    if det == "a" and words[0][0] in "aeiou":
        det = "an"
    return " ".join([det, *words])


def _rel(a: Shape, b: Shape, rng: random.Random) -> str:
    return rng.choice(_RELATION_WORDS[relation(a, b)])


def _one(s: Shape, rng: random.Random) -> list[str]:
    pic, bg = rng.choice(_PICTURE_WORDS), rng.choice(_BACKGROUND_WORDS)
    size = rng.choice(SIZE_WORDS[s.size])
    return [
        f"{_noun_phrase(s, rng)} on a {bg} background",
        f"there is {_noun_phrase(s, rng)} in the {pic}",
        f"the {pic} shows a single {size} {s.colour} {s.shape}",
        f"{_noun_phrase(s, rng, size=False)} that is {size}",
        f"one {size} {s.shape} coloured {s.colour}",
        f"a {pic} of {_noun_phrase(s, rng)}",
        f"only one shape {_noun_phrase(s, rng)}",
    ]


def _two(a: Shape, b: Shape, rng: random.Random) -> list[str]:
    pic = rng.choice(_PICTURE_WORDS)
    na, nb = _noun_phrase(a, rng), _noun_phrase(b, rng)
    return [
        f"{na} {_rel(a, b, rng)} {nb}",
        f"{nb} {_rel(b, a, rng)} {na}",
        f"two shapes {na} and {nb}",
        f"there are two objects with {na} {_rel(a, b, rng)} {nb}",
        f"the {pic} shows {na} {_rel(a, b, rng)} {nb}",
        f"in the {pic} the {a.colour} {a.shape} is {_rel(a, b, rng)} the {b.colour} {b.shape}",
        f"two shapes the {b.colour} {b.shape} is {_rel(b, a, rng)} the {a.colour} {a.shape}",
    ]


def _three(a: Shape, b: Shape, c: Shape, rng: random.Random) -> list[str]:
    pic = rng.choice(_PICTURE_WORDS)
    na, nb, nc = (_noun_phrase(s, rng) for s in (a, b, c))
    return [
        f"three shapes {na} {nb} and {nc}",
        f"{na} {_rel(a, b, rng)} {nb} and {nc}",
        f"there are three objects in the {pic} with {na} {_rel(a, b, rng)} {nb}",
        f"the {pic} shows {na} {nb} and {nc}",
        f"three shapes with {na} {_rel(a, c, rng)} {nc}",
        f"{nc} {_rel(c, b, rng)} {nb} and {na}",
        f"the {pic} contains three shapes the {b.colour} {b.shape} is {_rel(b, c, rng)} "
        f"the {c.colour} {c.shape}",
    ]


def captions(shapes: list[Shape], rng: random.Random, count: int = 5) -> list[str]:
    """``count`` different captions for ``shapes``, each a space-separated lower-case string."""
    order = list(shapes)
    rng.shuffle(order)
    pool = {1: _one, 2: _two, 3: _three}[len(order)](*order, rng)
    unique = list(dict.fromkeys(pool))
    rng.shuffle(unique)
    return unique[:count]


def generate_one(args: tuple[int, int, str]) -> dict:
    """Render image ``index``, save it as JPEG in ``folder``, return its Karpathy entry."""
    seed, index, folder = args
    img, shapes = render(seed, index)
    filename = f"shapes_{index:06d}.jpg"
    with atomic_write(os.path.join(folder, filename)) as f:
        img.save(f, format="JPEG", quality=92)
    rng = random.Random(f"{seed}:{index}")
    sentences = [{"tokens": c.split(), "raw": c} for c in captions(shapes, rng)]
    return {"filename": filename, "imgid": index, "sentences": sentences,
            "objects": [asdict(s) for s in shapes]}


def split_of(index: int, total: int) -> str:
    """80 / 10 / 10 by index: train, val, test (in Karpathy's lower-case names)."""
    if index < round(total * 0.8):
        return "train"
    return "val" if index < round(total * 0.9) else "test"
