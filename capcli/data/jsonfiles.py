"""Reading and writing the JSON files capcli uses, with one-line errors and atomic writes."""

from __future__ import annotations

import itertools
import json
import os
import re
import stat

from capcli.errors import CapcliError, InputError
from capcli.safeio import atomic_write, open_regular
from capcli.text import visible


def require_regular_file(path: str, error: type[CapcliError] = InputError) -> None:
    """Refuse a FIFO, device or folder where a file is read: opening a FIFO blocks for ever."""
    if os.path.exists(path) and not stat.S_ISREG(os.stat(path).st_mode):
        raise error(f"{visible(path)}: not a regular file (a FIFO, device or folder); give the file itself")


# Nesting capcli's own small files (locks, sidecars, bundle configs, evaluation reports) never come near;
# deeper is a hostile or damaged file, refused before code that walks it recurses too deep.
MAX_DEPTH = 64
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")


def nesting_depth(text: str) -> int:
    """How deep arrays and objects nest in the JSON ``text`` (strings skipped)."""
    brackets = _NOT_BRACKET.sub("", _STRING.sub("", text))
    return max(itertools.accumulate(1 if c in "[{" else -1 for c in brackets), default=0)


def parse_json(text: str, where: str, error: type[CapcliError] = InputError, max_depth: int | None = None) -> object:
    """Parse the JSON ``text`` read from ``where``; malformed or too deeply nested JSON raises
    ``error`` in one line naming it.

    Args:
        max_depth: refuse nesting deeper than this (None: only what would exhaust the parser's stack).
    """
    if max_depth is not None and nesting_depth(text) > max_depth:
        raise error(f"{visible(where)}: JSON nested deeper than {max_depth} levels; a damaged or hostile file")
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise error(f"{visible(where)}: malformed JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}") from None
    except RecursionError:
        raise error(f"{visible(where)}: JSON nested too deeply to read; a damaged or hostile file") from None


def read_json(path: str, error: type[CapcliError] = InputError, max_depth: int | None = None) -> object:
    """Parse ``path``; a missing, non-regular (a FIFO would block), non-UTF-8, malformed or too deeply
    nested (``max_depth``, see :func:`parse_json`) file raises ``error`` naming the place."""
    try:
        with open_regular(path, text=True, error=error) as f:
            text = f.read()
    except FileNotFoundError:
        raise error(f"{visible(path)}: no such file") from None
    except UnicodeDecodeError as exc:
        raise error(f"{visible(path)}: not UTF-8 text (byte {exc.start})") from None
    return parse_json(text, path, error, max_depth)


def write_json(path: str, data: object) -> None:
    """Write ``data`` as JSON through a fresh temporary file and a rename (``capcli.safeio``): never
    a half-written file, and never through a symlink planted at ``path``."""
    text = json.dumps(data)  # the C encoder; json.dump() streams through the slow Python one
    with atomic_write(path, text=True) as f:
        f.write(text)
