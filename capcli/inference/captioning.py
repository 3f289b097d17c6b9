"""Captioning service: load a checkpoint (or an exported bundle), caption image files with batched beam search.

Used by ``capcli caption``, ``capcli evaluate``, ``capcli demo`` and the dashboard. A bad image
file yields a result with an ``error`` and never stops the others.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch

from capcli.data.transforms import ImageSkipped, load_square
from capcli.data.vocab import END, START, Detokenizer
from capcli.errors import InputError
from capcli.model import cpu as cpu_kernels
from capcli.model.decoding import Decoded, banned_words, beam_search
from capcli.paths import best_checkpoint_pattern, best_checkpoints, checkpoint_files
from capcli.runtime.device import Precision, resolve_device, resolve_precision
from capcli.runtime.progress import SILENT, Progress
from capcli.store.checkpoint import Checkpoint
from capcli.store.files import model_from_checkpoint, read_checkpoint
from capcli.training.features import encode_images

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")


@dataclass
class Captioner:
    """A model ready to caption: encoder and decoder in eval mode on ``device``."""

    encoder: torch.nn.Module
    decoder: torch.nn.Module
    word_map: dict[str, int]
    image_size: int
    max_len: int
    device: torch.device
    precision: Precision
    path: str
    checkpoint: Checkpoint

    @property
    def banned(self) -> tuple[int, ...]:
        return banned_words(self.word_map)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 images (batch, 3, S, S) → encoder features (batch, 14, 14, C)."""
        return encode_images(self.encoder, images, self.device, self.precision)

    def decode(self, images: torch.Tensor, beam_size: int, length_penalty: float = 0.0,
               max_len: int | None = None) -> list[Decoded]:
        """uint8 images (batch, 3, S, S) → one :class:`Decoded` per image."""
        return self.decode_features(self.encode(images), beam_size, length_penalty, max_len)

    @torch.no_grad()
    def decode_features(self, features: torch.Tensor, beam_size: int, length_penalty: float = 0.0,
                        max_len: int | None = None, attention: bool = True) -> list[Decoded]:
        with self.precision.autocast():
            return beam_search(self.decoder, features.to(self.device), self.word_map[START], self.word_map[END],
                               max_len or self.max_len, beam_size, length_penalty, self.banned, attention)


def load_captioner(path: str, device: str = "auto", precision: str = "auto") -> Captioner:
    """Rebuild the model saved in a capcli checkpoint (training or A2C) or an exported bundle (its
    folder or its ``model.safetensors``).

    Raises:
        CheckpointError: missing, unsafe, corrupt or foreign file; a torn or hand-edited bundle.
    """
    ckpt = read_checkpoint(path)
    encoder, decoder = model_from_checkpoint(ckpt)
    torch_device = resolve_device(device)
    encoder.to(torch_device).eval()
    decoder.to(torch_device).eval()
    cpu_kernels.enable(torch_device, encoder, decoder)
    return Captioner(encoder, decoder, ckpt.word_map, ckpt.image_size, ckpt.max_len, torch_device,
                     resolve_precision(precision, torch_device), ckpt.path, ckpt)  # a bundle: its folder


def load_model(model: str | None, output_folder: str, device: str = "auto", precision: str = "auto") -> Captioner:
    """The model ``-m`` names (a checkpoint or a bundle), or else the only BEST checkpoint in ``output_folder``."""
    return load_captioner(model or find_best_checkpoint(output_folder), device, precision)


def find_best_checkpoint(output_folder: str) -> str:
    """The only ``BEST_*.pth.tar`` in ``output_folder``; an error listing the candidates otherwise."""
    found = best_checkpoints(output_folder)
    if len(found) == 1:
        return found[0]
    if not found:
        others = checkpoint_files(output_folder)
        hint = f" (checkpoints there: {', '.join(os.path.basename(p) for p in others)})" if others else ""
        raise InputError(f"no {os.path.basename(best_checkpoint_pattern(output_folder))} in {output_folder}{hint}; "
                         "train first or pass --model FILE")
    raise InputError(f"several models in {output_folder}: {', '.join(os.path.basename(p) for p in found)}; "
                     "choose one with --model")


def expand_inputs(items: list[str]) -> list[str]:
    """Image paths from files and folders (a folder gives its image files, sorted by name)."""
    paths: list[str] = []
    for item in items:
        if os.path.isdir(item):
            inside = sorted(os.path.join(item, f) for f in os.listdir(item)
                            if f.lower().endswith(IMAGE_EXTENSIONS) and os.path.isfile(os.path.join(item, f)))
            if not inside:
                raise InputError(f"{item}: no image files in this folder")
            paths.extend(inside)
        else:
            paths.append(item)
    return paths


@dataclass
class CaptionResult:
    image: str
    words: list[str] | None = None
    score: float | None = None  # the beam search's summed log-probability (Decoded.score)
    finished: bool = True  # the caption ended with <end> (its log-probability counted in ``score``)
    attention: torch.Tensor | None = None  # (len(words), 14 * 14) or None
    pixels: np.ndarray | None = None  # (S, S, 3) uint8, the model's input, for pictures
    error: str | None = None

    @property
    def caption(self) -> str | None:
        return None if self.words is None else " ".join(self.words)

    def as_json(self) -> dict:
        if self.error:
            return {"image": self.image, "error": self.error}
        return {"image": self.image, "caption": self.caption, "score": round(self.score, 6)}


def caption_files(captioner: Captioner, paths: list[str], beam_size: int = 5, length_penalty: float = 0.0,
                  batch_size: int = 16, progress: Progress = SILENT) -> list[CaptionResult]:
    """Caption every file in ``paths`` (in order); unreadable files get a result with ``error``."""
    to_words = Detokenizer(captioner.word_map)
    results = [CaptionResult(p) for p in paths]
    task = progress.task("captioning", len(paths), "img")
    for first in range(0, len(paths), batch_size):
        batch = results[first:first + batch_size]
        good, arrays = [], []
        for result in batch:
            try:
                arrays.append(load_square(result.image, captioner.image_size))
                good.append(result)
            except ImageSkipped as exc:
                result.error = f"{result.image}: {exc}"
        if good:
            images = torch.from_numpy(np.stack(arrays))
            for result, decoded, array in zip(good, captioner.decode(images, beam_size, length_penalty), arrays):
                result.words = to_words(decoded.tokens)
                result.score = decoded.score
                result.finished = decoded.finished
                result.attention = decoded.attention
                result.pixels = array.transpose(1, 2, 0)
        task.advance(len(batch))
    task.close()
    return results


def original_captions(captions_file: str) -> dict[str, list[str]]:
    """Image file name → its original captions, from a caption file of any format ``capcli prep`` reads."""
    from capcli.data.sources import SourceOptions, read_source

    images = read_source([captions_file], SourceOptions()).images
    return {os.path.basename(img.ref): [" ".join(c) for c in img.captions] for img in images}


def check_word_map(captioner: Captioner, word_map_file: str) -> None:
    """A word map given with the checkpoint must be the checkpoint's own (the seed's ``-wm`` option).

    Raises:
        InputError: the file holds another word map.
    """
    from capcli.data.jsonfiles import read_json

    if read_json(word_map_file) != captioner.word_map:
        raise InputError(f"{word_map_file}: this word map differs from the one in {captioner.path}; "
                         "leave out --word-map (the checkpoint holds its own)")
