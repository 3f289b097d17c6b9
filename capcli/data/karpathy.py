"""Karpathy split JSON files, and :class:`SourceImage`, what every caption source becomes.

A source image has tokenised captions, its raw reference captions (for evaluation) and a split
(``TRAIN``, ``VAL`` or ``TEST``; Karpathy's ``restval`` counts as training). A malformed Karpathy
file raises :class:`~capcli.errors.InputError` naming the file and the entry. The other formats
are read in :mod:`capcli.data.sources`; ``read_results_csv`` is kept here for its callers.

An image name that leads out of the image folder (an absolute path, or ``..`` climbing above it)
is never opened: its :class:`SourceImage` has no path and a ``problem`` that prep records as the
skip reason. The check is on the name as written, not on the disk: a symbolic link inside the
image folder is followed, because the folder is the user's own choice (data sets are often linked
in from elsewhere) while the caption file may come from anyone.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field

from capcli.data.jsonfiles import read_json
from capcli.data.vocab import coco_tokenize
from capcli.errors import InputError

_KARPATHY_SPLITS = {"train": "TRAIN", "restval": "TRAIN", "val": "VAL", "test": "TEST"}


@dataclass
class SourceImage:
    """One image of a caption source with all of its captions (lists of tokens)."""

    ref: str  # how the source names the image: "filename" or "filepath/filename"
    path: str  # where the image file is expected on disk; "" when ``problem`` forbids opening it
    split: str
    captions: list[list[str]] = field(default_factory=list)
    # every reference caption as evaluation reads it: coco_tokenize tokens joined by spaces
    references: list[str] = field(default_factory=list)
    problem: str | None = None  # why the image must be skipped without being opened


OUTSIDE = "path outside --image-folder"


def source_image(ref: str, image_folder: str, split: str) -> SourceImage:
    """The image ``ref`` names inside ``image_folder``; one whose name leads outside the folder
    gets no path and the problem :data:`OUTSIDE`."""
    name = os.path.normpath(ref)
    if os.path.isabs(name) or name == os.pardir or name.startswith(os.pardir + os.sep):
        return SourceImage(ref, "", split, problem=OUTSIDE)
    return SourceImage(ref, os.path.join(image_folder, ref), split)


def _sentence_tokens(sentence: object, where: str) -> tuple[list[str], str]:
    """(training tokens, reference) of one sentence: its ``tokens`` as given (else its ``raw``
    tokenised), and its ``raw`` text (else its tokens) through :func:`coco_tokenize`."""
    if not isinstance(sentence, dict):
        raise InputError(f"{where}: expected an object with 'tokens'")
    tokens, raw = sentence.get("tokens"), sentence.get("raw")
    if tokens is None and isinstance(raw, str):
        tokens = coco_tokenize(raw)
    if not isinstance(tokens, list) or not all(isinstance(t, str) for t in tokens):
        raise InputError(f"{where}: 'tokens' must be a list of strings")
    tokens = [t.lower() for t in tokens if t.strip()]
    return tokens, " ".join(coco_tokenize(raw if isinstance(raw, str) else " ".join(tokens)))


def read_karpathy_json(path: str, image_folder: str, data: object = None) -> tuple[dict, list[SourceImage]]:
    """Read a Karpathy ``dataset_*.json`` (``data``: its content, when already parsed).

    Returns:
        The file's other top-level fields (``dataset``, ...) and its images in file order.

    Raises:
        InputError: unreadable or malformed file, naming the entry at fault.
    """
    if data is None:
        data = read_json(path)
    images = data.get("images") if isinstance(data, dict) else None
    if not isinstance(images, list):
        raise InputError(f"{path}: expected a top-level object with an 'images' list (Karpathy format)")
    out = []
    for i, entry in enumerate(images):
        where = f"{path}: images[{i}]"
        if not isinstance(entry, dict) or not isinstance(entry.get("filename"), str):
            raise InputError(f"{where}: missing 'filename'")
        split = _KARPATHY_SPLITS.get(entry.get("split"))
        if split is None:
            raise InputError(f"{where}: unknown split {entry.get('split')!r} "
                             f"(expected one of {', '.join(_KARPATHY_SPLITS)})")
        sentences = entry.get("sentences")
        if not isinstance(sentences, list):
            raise InputError(f"{where}: missing 'sentences' list")
        ref = os.path.join(entry.get("filepath") or "", entry["filename"])
        image = source_image(ref, image_folder, split)
        for j, sentence in enumerate(sentences):
            tokens, reference = _sentence_tokens(sentence, f"{where}.sentences[{j}]")
            image.captions.append(tokens)
            if reference:
                image.references.append(reference)
        out.append(image)
    return {k: v for k, v in data.items() if k != "images"}, out


def split_by_image(names: list[str], seed: int, val_fraction: float, test_fraction: float) -> dict[str, str]:
    """Deterministic split of image names, independent of row order."""
    order = sorted(names, key=lambda n: hashlib.sha256(f"{seed}:{n}".encode()).hexdigest())
    n = len(order)
    n_val = max(1, round(n * val_fraction)) if n >= 3 and val_fraction > 0 else 0
    n_test = max(1, round(n * test_fraction)) if n >= 3 and test_fraction > 0 else 0
    splits = {}
    for i, name in enumerate(order):
        splits[name] = "VAL" if i < n_val else "TEST" if i < n_val + n_test else "TRAIN"
    return splits


def dataset_name_of(path: str, data: object = None) -> str | None:
    """The ``dataset`` field of a Karpathy JSON, or the ``dataset_NAME.json`` part of its name."""
    base = os.path.basename(path)
    if base.startswith("dataset_") and base.endswith(".json"):
        return base[len("dataset_"):-len(".json")]
    header, _ = read_karpathy_json(path, "", data)
    dataset = header.get("dataset")
    return dataset if isinstance(dataset, str) else None
