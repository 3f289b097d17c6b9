"""Telling a caption file's format from its content, and reading the file as text.

The formats (the readers are in :mod:`capcli.data.readers`, the table for users in docs/data.md):

============  ===================================================================================
karpathy      a JSON object whose ``images`` hold ``filename``, ``split`` and ``sentences``
coco          a JSON object with ``images`` (``id``, ``file_name``) and ``annotations``
              (``image_id``, ``caption``): COCO's ``captions_*.json``
jsonl         one JSON object per line (or a JSON list of objects) with an image key and a caption
              key (a string or a list of strings), and optionally ``split``
flickr8k      ``Flickr8k.token.txt``: ``name.jpg#k<TAB>caption`` lines
results.csv   Flickr30k's Kaggle ``results.csv``: ``image_name| comment_number| comment``
kaggle        the Kaggle Flickr8k ``captions.txt``: a CSV with the header ``image,caption``
table         any other CSV (``,``), TSV (tab) or ``|``-separated file with a header naming an image
              column and a caption column, and optionally ``split``
============  ===================================================================================

The content decides, not the file's name: a JSON document (or its first line), the first line of
a text file. A file that is none of these, not UTF-8 or binary is one :class:`InputError` naming
the file and the line.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from capcli.errors import InputError, shorten
from capcli.safeio import open_regular

KARPATHY, COCO, JSONL, FLICKR8K, RESULTS_CSV, KAGGLE, TABLE = (
    "karpathy", "coco", "jsonl", "flickr8k", "results.csv", "kaggle", "table")

_FLICKR8K_LINE = re.compile(r"[^\t#]+#\d+\t")


@dataclass(frozen=True)
class Detected:
    """A caption file's format and content (the parsed JSON, or the text of a text format)."""

    format: str
    text: str = ""
    data: object = None
    delimiter: str = ","  # TABLE and KAGGLE: the column separator


def read_text(path: str) -> str:
    """The whole file as text (a UTF-8 byte-order mark dropped).

    Raises:
        InputError: missing, not a regular file, not UTF-8 or binary, naming the line.
    """
    try:
        with open_regular(path, error=InputError) as f:  # a FIFO would block for ever: refused at once
            raw = f.read()
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise InputError(f"{path}: a folder, not a caption file") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise InputError(f"{path}: line {line}: not UTF-8 text (byte {exc.start})") from None
    nul = text.find("\x00")
    if nul >= 0:
        raise InputError(f"{path}: line {text.count(chr(10), 0, nul) + 1}: a binary file (NUL byte), not captions")
    return text


def detect(path: str) -> Detected:
    """Read ``path`` and tell its format from the content.

    Raises:
        InputError: unreadable, malformed JSON, or no format capcli reads, naming file and line.
    """
    text = read_text(path)
    stripped = text.lstrip()
    if not stripped:
        raise InputError(f"{path}: line 1: empty file, no captions")
    if stripped[0] in "{[":
        return _detect_json(path, text)
    lines = text.split("\n")
    number, first = next((n, line.rstrip("\r")) for n, line in enumerate(lines, 1) if line.strip())
    if _FLICKR8K_LINE.match(first):
        return Detected(FLICKR8K, text)
    header = first.strip().lower()
    if header.startswith("image_name|"):
        return Detected(RESULTS_CSV, text)
    delimiter = "\t" if "\t" in first else "|" if "|" in first and "," not in first else ","
    if delimiter == "," and "," not in first:
        raise InputError(f"{path}: line {number}: not a caption file capcli reads (got {shorten(first)!r}; "
                         "expected a CSV/TSV header naming an image and a caption column, JSON, JSONL, "
                         "Flickr8k.token.txt lines or results.csv)")
    kind = KAGGLE if header.replace(" ", "") == "image,caption" else TABLE
    return Detected(kind, text, delimiter=delimiter)


def too_deep(path: str, where: str = "") -> InputError:
    """The error for JSON nested deeper than Python's parser can follow (it raises RecursionError)."""
    return InputError(f"{path}: {where}JSON nested too deeply to read (thousands of levels of [ or {{); "
                      "not a caption file")


def _detect_json(path: str, text: str) -> Detected:
    first = text.lstrip().split("\n", 1)[0]
    try:
        head = json.loads(first)
    except (ValueError, RecursionError):
        head = None
    if isinstance(head, dict) and "images" not in head and "annotations" not in head:
        return Detected(JSONL, text)  # one object per line (a broken later line is a bad row)
    try:
        data = json.loads(text)
    except RecursionError:
        raise too_deep(path) from None
    except json.JSONDecodeError as exc:
        if _second_line_is_an_object(text):
            return Detected(JSONL, text)  # JSON lines with a broken first line: a bad row
        raise InputError(f"{path}: malformed JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}") from None
    if isinstance(data, list):
        return Detected(JSONL, text, data)
    if isinstance(data, dict) and isinstance(data.get("images"), list):
        if isinstance(data.get("annotations"), list):
            return Detected(COCO, text, data)
        if "annotations" not in data:
            return Detected(KARPATHY, text, data)
    raise InputError(f"{path}: line 1: a JSON file capcli cannot read: expected a Karpathy split file "
                     "('images' with 'sentences'), COCO captions ('images' and 'annotations' lists), "
                     "one object per line (JSONL) or a list of objects")


def _second_line_is_an_object(text: str) -> bool:
    lines = [line for line in text.split("\n", 20)[:20] if line.strip()]
    try:
        return len(lines) > 1 and isinstance(json.loads(lines[1]), dict)
    except (ValueError, RecursionError):
        return False
