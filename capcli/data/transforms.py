"""Decoding any image Pillow reads into the square RGB uint8 array capcli stores.

Used by ``capcli prep`` (in worker processes) and by ``capcli caption`` so that an image is
treated the same way at training and at inference time.
"""

from __future__ import annotations

import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from capcli.errors import InputError
from capcli.safeio import open_regular

_SIXTEEN_BIT_MODES = {"I", "I;16", "I;16B", "I;16L", "I;16N"}
_ALPHA_MODES = {"RGBA", "LA", "PA", "RGBa", "La"}


class ImageSkipped(Exception):
    """An image that cannot be used; ``str()`` is the reason written to the manifest."""


def _to_rgb(img: Image.Image) -> Image.Image:
    """Convert any mode (grayscale, palette, alpha, CMYK, 16-bit) to 8-bit RGB."""
    if img.mode in _SIXTEEN_BIT_MODES or img.mode == "F":
        values = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode != "F" else max(float(values.max()), 1.0)
        img = Image.fromarray(np.clip(values / top * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in _ALPHA_MODES:
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def load_image(path: str) -> Image.Image:
    """Open, fully decode and orient an image as RGB.

    Raises:
        ImageSkipped: missing, not a regular file, empty, not an image, truncated, or above
            Pillow's decompression-bomb pixel limit.
    """
    try:
        with warnings.catch_warnings(), open_regular(path, error=InputError) as f:  # a FIFO would block
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(f) as img:
                img.load()
                img = ImageOps.exif_transpose(img)
                return _to_rgb(img)
    except FileNotFoundError:
        raise ImageSkipped("missing file") from None
    except InputError:  # from open_regular only
        raise ImageSkipped("not a regular file (a FIFO, device or socket); give an image file") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageSkipped(f"too many pixels (over Pillow's limit of {Image.MAX_IMAGE_PIXELS})") from None
    except UnidentifiedImageError:
        raise ImageSkipped("not an image Pillow can read") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageSkipped(f"unreadable image: {exc}") from None


def resize_square(img: Image.Image, size: int) -> np.ndarray:
    """Resize to ``size`` × ``size`` (as the seed does, no crop) and return (3, size, size) uint8."""
    resized = img.resize((size, size), Image.BICUBIC)
    pixels = np.asarray(resized, dtype=np.uint8)  # (size, size, 3)
    return np.ascontiguousarray(pixels.transpose(2, 0, 1))  # (3, size, size)


def load_square(path: str, size: int) -> np.ndarray:
    """Decode ``path`` into the stored (3, size, size) uint8 RGB array."""
    return resize_square(load_image(path), size)
