"""Reading caption sources: Karpathy split JSON files and the Flickr30k Kaggle ``results.csv``.

Both produce a list of :class:`SourceImage` with tokenised captions and a split (``TRAIN``,
``VAL`` or ``TEST``; Karpathy's ``restval`` counts as training). Malformed files raise
:class:`~capcli.errors.InputError` naming the file and the place.

An image name that leads out of the image folder (an absolute path, or ``..`` climbing above it)
is never opened: its :class:`SourceImage` has no path and a ``problem`` that prep records as the
skip reason. The check is on the name as written, not on the disk: a symbolic link inside the
image folder is followed, because the folder is the user's own choice (data sets are often linked
in from elsewhere) while the caption file may come from anyone.
"""

from __future__ import annotations

import csv
import hashlib
import os
from dataclasses import dataclass, field

from capcli.data.jsonfiles import read_json, require_regular_file
from capcli.data.vocab import tokenize
from capcli.errors import InputError

_KARPATHY_SPLITS = {"train": "TRAIN", "restval": "TRAIN", "val": "VAL", "test": "TEST"}


@dataclass
class SourceImage:
    """One image of a caption source with all of its captions (lists of tokens)."""

    ref: str  # how the source names the image: "filename" or "filepath/filename"
    path: str  # where the image file is expected on disk; "" when ``problem`` forbids opening it
    split: str
    captions: list[list[str]] = field(default_factory=list)
    problem: str | None = None  # why the image must be skipped without being opened


OUTSIDE = "path outside --image-folder"


def source_image(ref: str, image_folder: str, split: str) -> SourceImage:
    """The image ``ref`` names inside ``image_folder``; one whose name leads outside the folder
    gets no path and the problem :data:`OUTSIDE`."""
    name = os.path.normpath(ref)
    if os.path.isabs(name) or name == os.pardir or name.startswith(os.pardir + os.sep):
        return SourceImage(ref, "", split, problem=OUTSIDE)
    return SourceImage(ref, os.path.join(image_folder, ref), split)


def _sentence_tokens(sentence: object, where: str) -> list[str]:
    if not isinstance(sentence, dict):
        raise InputError(f"{where}: expected an object with 'tokens'")
    tokens = sentence.get("tokens")
    if tokens is None and isinstance(sentence.get("raw"), str):
        return tokenize(sentence["raw"])
    if not isinstance(tokens, list) or not all(isinstance(t, str) for t in tokens):
        raise InputError(f"{where}: 'tokens' must be a list of strings")
    return [t.lower() for t in tokens if t.strip()]


def read_karpathy_json(path: str, image_folder: str) -> tuple[dict, list[SourceImage]]:
    """Read a Karpathy ``dataset_*.json``.

    Returns:
        The file's other top-level fields (``dataset``, ...) and its images in file order.

    Raises:
        InputError: unreadable or malformed file, naming the entry at fault.
    """
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
        image.captions = [_sentence_tokens(s, f"{where}.sentences[{j}]") for j, s in enumerate(sentences)]
        out.append(image)
    return {k: v for k, v in data.items() if k != "images"}, out


def _parse_csv_row(row: list[str], where: str) -> tuple[str, str]:
    """(image name, comment) of one ``image_name| comment_number| comment`` row."""
    cells = [c.strip() for c in row]
    if len(cells) == 2:
        # The published Flickr30k file has a row whose number and comment lost their separator.
        number, _, comment = cells[1].partition(" ")
        if number.isdigit() and comment:
            cells = [cells[0], number, comment]
    if len(cells) != 3 or not cells[0] or not cells[2]:
        raise InputError(f"{where}: expected 'image_name| comment_number| comment', got {'|'.join(row)!r}")
    return cells[0], cells[2]


def _split_by_image(names: list[str], seed: int, val_fraction: float, test_fraction: float) -> dict[str, str]:
    """Deterministic split of image names, independent of row order."""
    order = sorted(names, key=lambda n: hashlib.sha256(f"{seed}:{n}".encode()).hexdigest())
    n = len(order)
    n_val = max(1, round(n * val_fraction)) if n >= 3 and val_fraction > 0 else 0
    n_test = max(1, round(n * test_fraction)) if n >= 3 and test_fraction > 0 else 0
    splits = {}
    for i, name in enumerate(order):
        splits[name] = "VAL" if i < n_val else "TEST" if i < n_val + n_test else "TRAIN"
    return splits


def read_results_csv(path: str, image_folder: str, seed: int, val_fraction: float,
                     test_fraction: float) -> list[SourceImage]:
    """Read a Flickr30k Kaggle ``results.csv`` and split it by image (never by caption row)."""
    by_name: dict[str, SourceImage] = {}
    require_regular_file(path)
    try:
        with open(path, encoding="utf-8", newline="") as f:
            rows = csv.reader(f, delimiter="|")
            header = next(rows, None)
            if header is None or [h.strip() for h in header][:1] != ["image_name"]:
                raise InputError(f"{path}: line 1: expected the header 'image_name| comment_number| comment'")
            for row in rows:
                if not any(c.strip() for c in row):
                    continue
                name, comment = _parse_csv_row(row, f"{path}: line {rows.line_num}")
                image = by_name.setdefault(name, source_image(name, image_folder, "TRAIN"))
                image.captions.append(tokenize(comment))
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    except csv.Error as exc:
        raise InputError(f"{path}: line {rows.line_num}: {exc}") from None
    splits = _split_by_image(list(by_name), seed, val_fraction, test_fraction)
    for name, image in by_name.items():
        image.split = splits[name]
    return list(by_name.values())


def dataset_name_of(path: str) -> str | None:
    """The ``dataset`` field of a Karpathy JSON, or the ``dataset_NAME.json`` part of its name."""
    base = os.path.basename(path)
    if base.startswith("dataset_") and base.endswith(".json"):
        return base[len("dataset_"):-len(".json")]
    header, _ = read_karpathy_json(path, "")
    dataset = header.get("dataset")
    return dataset if isinstance(dataset, str) else None
