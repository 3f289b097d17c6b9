"""Any caption source capcli reads, as one list of :class:`SourceImage` with splits.

``read_source`` tells each file's format from its content (:mod:`capcli.data.formats`), reads its
rows (:mod:`capcli.data.readers`; Karpathy files in :mod:`capcli.data.karpathy`), tokenises every
raw caption with :func:`~capcli.data.vocab.coco_tokenize` and gathers the rows by image. Splits
come, first to last, from:

1. split lists (``--split-list``, or ``Flickr_8k.{train,dev,test}Images.txt`` next to a
   ``Flickr8k.token.txt``): one image name per line, the file's name saying the split; an image
   in none of them is skipped and reported;
2. the rows themselves (a ``split`` column or key; Karpathy's ``split``);
3. the names of several caption files (``captions_train2014.json``, ``val.csv``); when these give
   no test file, the validation file's images are halved between VAL and TEST by image name
   (as Karpathy's split does with COCO's val2014);
4. otherwise a deterministic split by image: images ordered by a hash of seed and name, the first
   ``val_fraction`` to VAL, the next ``test_fraction`` to TEST, the rest to TRAIN. Row order does
   not matter and all captions of an image stay in one split.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from capcli.config import DATASET_NAME
from capcli.data.formats import COCO, FLICKR8K, KAGGLE, KARPATHY, RESULTS_CSV, Detected, detect, read_text
from capcli.data.karpathy import SourceImage, dataset_name_of, read_karpathy_json, source_image, split_by_image
from capcli.data.readers import BadRows, Columns, Row, read_rows, split_word
from capcli.data.vocab import coco_tokenize
from capcli.errors import InputError
from capcli.text import visible

FLICKR8K_LISTS = ("Flickr_8k.trainImages.txt", "Flickr_8k.devImages.txt", "Flickr_8k.testImages.txt")
_SUGGESTED = {COCO: "coco", FLICKR8K: "flickr8k", KAGGLE: "flickr8k", RESULTS_CSV: "flickr30k"}


@dataclass(frozen=True)
class SourceOptions:
    """How to read caption files: where the images are and how to split images without a split."""

    image_folder: str = ""
    seed: int = 42
    val_fraction: float = 0.05
    test_fraction: float = 0.05
    split_lists: tuple[str, ...] = ()
    columns: Columns = Columns()


@dataclass
class Source:
    """Images with captions and splits, what was read, and what was left out before decoding."""

    format: str
    images: list[SourceImage]
    files: list[str]  # every file read: caption files, then split lists
    bad_rows: list[dict] = field(default_factory=list)  # {"file", "where", "reason"}
    skipped: list[dict] = field(default_factory=list)  # images left out: {"split": None, "source", "reason"}


def read_source(paths: Sequence[str], options: SourceOptions) -> Source:
    """Read the caption files ``paths`` (one dataset, any formats but Karpathy's mixed).

    Raises:
        InputError: a file that is unreadable, of no known format or without one usable row,
            naming the file and the line.
    """
    detected = [(path, detect(path)) for path in paths]
    karpathy = [path for path, d in detected if d.format == KARPATHY]
    if karpathy:
        if len(paths) > 1 or options.split_lists:
            raise InputError(f"{karpathy[0]}: a Karpathy split file holds every image and split; give it alone")
        images = read_karpathy_json(paths[0], options.image_folder, detected[0][1].data)[1]
        return Source(KARPATHY, images, list(paths))
    bad = BadRows()
    images: dict[str, SourceImage] = {}
    explicit: dict[str, str] = {}
    file_splits = _file_splits(paths)
    for path, d in detected:
        rows = read_rows(path, d, options.columns, options.image_folder, bad)
        if not any(row.texts for row in rows):
            first = next((b for b in bad.rows if b["file"] == path), None)
            raise InputError(f"{path}: no usable caption"
                             + (f" ({first['where']}: {visible(first['reason'])})" if first else ""))
        for row in rows:
            _add_row(images, explicit, row, row.split or file_splits.get(path), path, options.image_folder, bad)
    lists = list(options.split_lists) or _flickr8k_lists(detected)
    skipped = _assign_splits(images, explicit, _read_split_lists(lists, bad), options,
                             halve_val=bool(file_splits) and "TEST" not in file_splits.values())
    formats = sorted({d.format for _, d in detected})
    return Source("+".join(formats), list(images.values()), list(paths) + lists, bad.rows, skipped)


def _add_row(images: dict[str, SourceImage], explicit: dict[str, str], row: Row, split: str | None, path: str,
             image_folder: str, bad: BadRows) -> None:
    """Add ``row``'s captions to its image (a new one at first sight)."""
    if split is not None and explicit.setdefault(row.image, split) != split:
        bad.add(path, row.where, f"{visible(row.image)} is in {explicit[row.image]} already, not {split}")
        return
    image = images.get(row.image)
    if image is None:
        image = images[row.image] = source_image(row.image, image_folder, "TRAIN")
    for text in row.texts:
        tokens = coco_tokenize(text)
        if not tokens:
            bad.add(path, row.where, "a caption without words")
            continue
        image.captions.append(tokens)
        image.references.append(" ".join(tokens))


def _split_of_file_name(path: str) -> str | None:
    """The split a file's name says: ``captions_train2014.json``, ``Flickr_8k.devImages.txt``, ``val.csv``."""
    stem = os.path.splitext(os.path.basename(path))[0].lower()
    for word in re.findall(r"[a-z]+", stem):
        split = split_word(word.removesuffix("images"))
        if split is not None:
            return split
    return None


def _file_splits(paths: Sequence[str]) -> dict[str, str]:
    """Several caption files: the split each one's name says (a single file is split by image)."""
    if len(paths) < 2:
        return {}
    return {p: s for p in paths if (s := _split_of_file_name(p)) is not None}


def _flickr8k_lists(detected: list[tuple[str, Detected]]) -> list[str]:
    """Flickr8k's split lists found next to its ``Flickr8k.token.txt``."""
    for path, d in detected:
        if d.format == FLICKR8K:
            found = [os.path.join(os.path.dirname(path), n) for n in FLICKR8K_LISTS]
            return [p for p in found if os.path.isfile(p)]
    return []


def _read_split_lists(paths: list[str], bad: BadRows) -> dict[str, str]:
    """Image name → split, from files of names whose own name says the split."""
    splits: dict[str, str] = {}
    for path in paths:
        split = _split_of_file_name(path)
        if split is None:
            raise InputError(f"{path}: cannot tell which split this list is for: its name should say "
                             "train, val (or dev) or test")
        for number, line in enumerate(read_text(path).split("\n"), 1):
            name = line.strip()
            if name and splits.setdefault(name, split) != split:
                bad.add(path, f"line {number}", f"{visible(name)} is listed for {splits[name]} already")
    return splits


def _assign_splits(images: dict[str, SourceImage], explicit: dict[str, str], listed: dict[str, str],
                   options: SourceOptions, halve_val: bool) -> list[dict]:
    """Set every image's split (module docstring); return the images left out (in no split list)."""
    skipped = []
    for name in list(images):
        split = listed.get(name) or listed.get(os.path.basename(name)) if listed else None
        if split is None and listed and name not in explicit:
            skipped.append({"split": None, "source": name, "reason": "in none of the split lists"})
            del images[name]
        elif split is not None:
            explicit[name] = split
    unsplit = [name for name in images if name not in explicit]
    by_hash = split_by_image(unsplit, options.seed, options.val_fraction, options.test_fraction)
    if halve_val:
        halves = split_by_image([n for n in images if explicit.get(n) == "VAL"], options.seed, 0.0, 0.5)
        by_hash.update({n: "TEST" if s == "TEST" else "VAL" for n, s in halves.items()})
    for name, image in images.items():
        image.split = by_hash.get(name) or explicit[name]
    return skipped


def suggest_dataset(paths: Sequence[str]) -> str | None:
    """The dataset name the first caption file suggests: a Karpathy file's own, the well-known
    datasets' (``coco``, ``flickr8k``, ``flickr30k``), else a safe form of the file's name."""
    detected = detect(paths[0])
    if detected.format == KARPATHY:
        return dataset_name_of(paths[0], detected.data)
    if detected.format in _SUGGESTED:
        return _SUGGESTED[detected.format]
    stem = os.path.splitext(os.path.basename(paths[0]))[0]
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", stem).lstrip(".")[:100]
    return safe if DATASET_NAME.fullmatch(safe) else None


def read_results_csv(path: str, image_folder: str, seed: int, val_fraction: float,
                     test_fraction: float) -> list[SourceImage]:
    """Read a Flickr30k Kaggle ``results.csv`` and split it by image (never by caption row); rows
    it cannot use are skipped (``capcli prep`` reports them: :func:`read_source`)."""
    options = SourceOptions(image_folder, seed, val_fraction, test_fraction)
    return read_source([path], options).images
