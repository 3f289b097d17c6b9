"""Row readers of the caption formats other than Karpathy's (see :mod:`capcli.data.formats`).

Each turns one file's content into :class:`Row` s: an image name, its raw captions, where in the
file the row is, and the split the row gives, if any. A row a reader cannot use (no image name,
no caption, an unknown split, a line that is not JSON...) is recorded in :class:`BadRows` with
its line number and skipped; only a problem with the whole file (no header it understands, a
quote that is never closed) raises :class:`~capcli.errors.InputError`.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from capcli.data.formats import COCO, FLICKR8K, JSONL, KAGGLE, RESULTS_CSV, TABLE, Detected, too_deep
from capcli.errors import InputError, shorten
from capcli.text import visible

# Column (or JSON key) names, compared lower-cased with spaces and "-" as "_"; the first found wins.
IMAGE_COLUMNS = ("image", "image_name", "image_file", "image_path", "filename", "file_name", "file", "img",
                 "path", "image_filename")
CAPTION_COLUMNS = ("caption", "captions", "comment", "text", "sentence", "sentences", "description",
                   "raw", "references")
SPLIT_COLUMN = "split"
_LINE_END = re.compile(r"\r\n|[\r\n\v\f\x1c-\x1e\x85\u2028\u2029]")
SPLIT_WORDS = {"train": "TRAIN", "training": "TRAIN", "restval": "TRAIN", "val": "VAL", "valid": "VAL",
               "validation": "VAL", "dev": "VAL", "test": "TEST", "testing": "TEST"}


@dataclass
class Row:
    """One usable row: an image, its raw captions and the split the file gives it (or None)."""

    image: str
    texts: list[str]
    where: str  # "line 12", "annotations[3]": for reporting
    split: str | None = None


@dataclass
class BadRows:
    """Rows skipped, each with its file, place and reason (kept in the manifest, shown by prep)."""

    rows: list[dict] = field(default_factory=list)

    def add(self, path: str, where: str, reason: str) -> None:
        self.rows.append({"file": path, "where": where, "reason": reason})


@dataclass(frozen=True)
class Columns:
    """Column names given by the user (``--image-column``/``--caption-column``), else looked up."""

    image: str | None = None
    caption: str | None = None


def read_rows(path: str, detected: Detected, columns: Columns, image_folder: str, bad: BadRows) -> list[Row]:
    """The usable rows of a caption file of any format but Karpathy's, bad ones added to ``bad``."""
    if detected.format == COCO:
        return coco_rows(path, detected.data, image_folder, bad)
    if detected.format == JSONL:
        return jsonl_rows(path, detected, columns, bad)
    if detected.format == FLICKR8K:
        return flickr8k_rows(path, detected.text, bad)
    if detected.format == RESULTS_CSV:
        return results_csv_rows(path, detected.text, bad)
    if detected.format in (KAGGLE, TABLE):
        return table_rows(path, detected.text, detected.delimiter, columns, bad)
    raise ValueError(f"no row reader for {detected.format}")


def split_word(value: str) -> str | None:
    """``TRAIN``/``VAL``/``TEST`` for a split as files write it (``restval``, ``dev``...), else None."""
    return SPLIT_WORDS.get(value.strip().lower())


# --- COCO ------------------------------------------------------------------------------------------


def coco_rows(path: str, data: dict, image_folder: str, bad: BadRows) -> list[Row]:
    """One row per image (so an image without a caption is reported, not lost) and one per annotation.

    COCO keeps train and val images in sub-folders named like the caption file (``train2014/`` for
    ``captions_train2014.json``): when ``image_folder`` holds that sub-folder and not the images
    themselves, the image names lead into it.
    """
    subfolder = _coco_subfolder(path, data, image_folder)
    names: dict[object, str] = {}
    rows = []
    for i, image in enumerate(data["images"]):
        image_id = image.get("id") if isinstance(image, dict) else None
        name = image.get("file_name") if isinstance(image, dict) else None
        if not isinstance(image_id, (int, str)) or isinstance(image_id, bool) or not isinstance(name, str) \
                or not name.strip():
            bad.add(path, f"images[{i}]", "expected an object with 'id' and 'file_name'")
            continue
        names[image_id] = os.path.join(subfolder, name.strip())
        rows.append(Row(names[image_id], [], f"images[{i}]"))
    for i, annotation in enumerate(data["annotations"]):
        where = f"annotations[{i}]"
        image_id = annotation.get("image_id") if isinstance(annotation, dict) else None
        caption = annotation.get("caption") if isinstance(annotation, dict) else None
        if not isinstance(image_id, (int, str)) or image_id not in names:
            bad.add(path, where, f"image_id {visible(shorten(image_id))} is not in 'images'")
        elif not isinstance(caption, str):
            bad.add(path, where, "no 'caption' text")
        else:
            rows.append(Row(names[image_id], [caption], where))
    return rows


def _coco_subfolder(path: str, data: dict, image_folder: str) -> str:
    match = re.fullmatch(r"captions_(\w+)\.json", os.path.basename(path))
    if not match or not image_folder or not os.path.isdir(os.path.join(image_folder, match.group(1))):
        return ""
    first = next((e.get("file_name") for e in data["images"] if isinstance(e, dict)
                  and isinstance(e.get("file_name"), str)), None)
    if first is None or os.path.exists(os.path.join(image_folder, first)):
        return ""
    return match.group(1)


# --- JSON lines ------------------------------------------------------------------------------------


def jsonl_rows(path: str, detected: Detected, columns: Columns, bad: BadRows) -> list[Row]:
    """One object per line (``detected.text``), or a JSON list of objects (``detected.data``)."""
    if isinstance(detected.data, list):
        items: Iterable[tuple[str, object]] = ((f"item {i}", obj) for i, obj in enumerate(detected.data))
    else:
        items = _json_lines(path, detected.text, bad)
    rows = []
    for where, obj in items:
        if not isinstance(obj, dict):
            bad.add(path, where, "expected a JSON object")
            continue
        keys = list(obj)
        image_key = _find_column(keys, IMAGE_COLUMNS, columns.image)
        caption_key = _find_column(keys, CAPTION_COLUMNS, columns.caption)
        split_key = _find_column(keys, (SPLIT_COLUMN,), None)
        if image_key is None or caption_key is None:
            bad.add(path, where, f"no {'image' if image_key is None else 'caption'} key "
                                 f"(keys: {visible(shorten(', '.join(map(str, keys)), 80)) or 'none'})")
            continue
        row = _make_row(path, where, obj[image_key], obj[caption_key],
                        obj.get(split_key) if split_key else None, bad)
        if row is not None:
            rows.append(row)
    return rows


def _json_lines(path: str, text: str, bad: BadRows) -> Iterable[tuple[str, object]]:
    for number, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except RecursionError:
            raise too_deep(path, f"line {number}: ") from None
        except json.JSONDecodeError as exc:
            bad.add(path, f"line {number}", f"malformed JSON at column {exc.colno}: {exc.msg}")
            continue
        yield f"line {number}", obj


# --- Flickr8k.token.txt and results.csv -----------------------------------------------------------


def flickr8k_rows(path: str, text: str, bad: BadRows) -> list[Row]:
    """``Flickr8k.token.txt``: ``1000268201_693b08cb0e.jpg#0<TAB>A child in a pink dress ...``."""
    rows = []
    for number, line in enumerate(text.split("\n"), 1):
        line = line.rstrip("\r")
        if not line.strip():
            continue
        key, tab, caption = line.partition("\t")
        name, hash_mark, index = key.strip().rpartition("#")
        if not tab or not hash_mark or not index.isdigit() or not name:
            bad.add(path, f"line {number}", f"expected 'name.jpg#N<TAB>caption', got {shorten(line)!r}")
        elif not caption.strip():
            bad.add(path, f"line {number}", "no caption")
        else:
            rows.append(Row(name, [caption], f"line {number}"))
    return rows


def results_csv_rows(path: str, text: str, bad: BadRows) -> list[Row]:
    """Flickr30k's ``results.csv``: ``image_name| comment_number| comment``, no split."""
    rows, header_seen = [], False
    for number, cells, error in _csv_rows(path, text, "|"):
        if not header_seen:
            header_seen = True  # the header, checked by detect()
            continue
        if error:
            bad.add(path, f"line {number}", error)
            continue
        cells = [c.strip() for c in cells]
        if len(cells) == 2:
            # The published Flickr30k file has a row whose number and comment lost their separator.
            comment_number, _, comment = cells[1].partition(" ")
            if comment_number.isdigit() and comment:
                cells = [cells[0], comment_number, comment]
        if len(cells) != 3 or not cells[0] or not cells[2]:
            bad.add(path, f"line {number}", f"expected 'image_name| comment_number| comment', "
                                            f"got {shorten('|'.join(cells))!r}")
        else:
            rows.append(Row(cells[0], [one_line(cells[2])], f"line {number}"))
    return rows


# --- CSV / TSV with a header -----------------------------------------------------------------------


def table_rows(path: str, text: str, delimiter: str, columns: Columns, bad: BadRows) -> list[Row]:
    """A delimited file whose header names an image column, a caption column and maybe ``split``."""
    rows, header, where_header = [], None, "line 1"
    image = caption = split = -1
    for number, cells, error in _csv_rows(path, text, delimiter):
        if header is None:
            header, where_header = [c.strip() for c in cells], f"line {number}"
            image = _column_index(path, where_header, header, IMAGE_COLUMNS, columns.image, "image")
            caption = _column_index(path, where_header, header, CAPTION_COLUMNS, columns.caption, "caption")
            found = _find_column(header, (SPLIT_COLUMN,), None)
            split = header.index(found) if found is not None else -1
            continue
        if error:
            bad.add(path, f"line {number}", error)
            continue
        if len(cells) != len(header):
            bad.add(path, f"line {number}", f"{len(cells)} fields where the header has {len(header)}"
                                            + (" (a caption with an unquoted comma?)" if len(cells) > len(header)
                                               else ""))
            continue
        row = _make_row(path, f"line {number}", cells[image], _cell_captions(cells[caption]),
                        cells[split] if split >= 0 else None, bad)
        if row is not None:
            rows.append(row)
    return rows


def _csv_rows(path: str, text: str, delimiter: str) -> Iterable[tuple[int, list[str], str | None]]:
    """(first line number, cells, None) of every non-blank record; (line, [], reason) for a malformed one.
    A quoted field may hold line ends, as the CSV rules allow (a caption written over two lines).

    Raises:
        InputError: a quote never closed (it swallows the rest of the file).
    """
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
    while True:
        start = reader.line_num + 1
        try:
            cells = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            if "end of data" in str(exc):
                raise InputError(f"{path}: line {start}: a quote opened here is never closed") from None
            yield reader.line_num, [], f"malformed CSV: {exc}"
            continue
        if any(c.strip() for c in cells):
            yield start, cells, None


def _cell_captions(cell: str) -> object:
    """A cell holding a JSON list of captions becomes that list; any other cell is one caption."""
    if cell.lstrip().startswith("["):
        try:
            return json.loads(cell)
        except (ValueError, RecursionError):  # not a list of captions after all: one caption
            return cell
    return cell


# --- shared ----------------------------------------------------------------------------------------


def _norm(name: object) -> str:
    return str(name).strip().lower().replace(" ", "_").replace("-", "_")


def _find_column(keys: list, candidates: tuple[str, ...], given: str | None) -> object | None:
    """The first of ``keys`` that is ``given`` (exactly, else normalised) or one of ``candidates``."""
    by_norm = {}
    for key in keys:
        by_norm.setdefault(_norm(key), key)
    if given is not None:
        return given if given in keys else by_norm.get(_norm(given))
    return next((by_norm[c] for c in candidates if c in by_norm), None)


def _column_index(path: str, where: str, header: list[str], candidates: tuple[str, ...], given: str | None,
                  what: str) -> int:
    found = _find_column(header, candidates, given)
    if found is None:
        expected = f"{given!r}" if given else f"one of {', '.join(candidates)}"
        option = f" (or name it with --{what}-column)" if not given else ""
        raise InputError(f"{path}: {where}: no {what} column in the header {shorten(','.join(header), 80)!r}; "
                         f"expected {expected}{option}")
    return header.index(found)


def _make_row(path: str, where: str, image: object, captions: object, split: object, bad: BadRows) -> Row | None:
    """A :class:`Row` from one record's values, or None (and a bad row) when they are unusable."""
    if not isinstance(image, str) or not image.strip():
        bad.add(path, where, "no image name")
        return None
    texts = [captions] if isinstance(captions, str) else captions
    if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
        bad.add(path, where, "the caption must be text or a list of texts")
        return None
    if not any(t.strip() for t in texts):
        bad.add(path, where, "no caption")
        return None
    split_name = None
    if isinstance(split, str) and split.strip():
        split_name = split_word(split)
        if split_name is None:
            bad.add(path, where, f"unknown split {shorten(split)!r} (expected train, val or test)")
            return None
    elif split is not None and not isinstance(split, str):
        bad.add(path, where, "the split must be text")
        return None
    return Row(image.strip(), [one_line(t) for t in texts if t.strip()], where, split_name)


def one_line(text: str) -> str:
    """A caption written over several lines (a quoted CSV field, a JSON string) on one: each line
    end becomes a space."""
    return _LINE_END.sub(" ", text)
