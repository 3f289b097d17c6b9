"""Reading and writing the JSON files capcli uses, with one-line errors and atomic writes."""

from __future__ import annotations

import json
import os
import stat

from capcli.errors import CapcliError, InputError
from capcli.safeio import atomic_write, open_regular
from capcli.text import visible


def require_regular_file(path: str, error: type[CapcliError] = InputError) -> None:
    """Refuse a FIFO, device or folder where a file is read: opening a FIFO blocks for ever."""
    if os.path.exists(path) and not stat.S_ISREG(os.stat(path).st_mode):
        raise error(f"{visible(path)}: not a regular file (a FIFO, device or folder); give the file itself")


def read_json(path: str, error: type[CapcliError] = InputError) -> object:
    """Parse ``path``; a missing, non-regular (a FIFO would block), non-UTF-8 or malformed file
    raises ``error`` naming the place."""
    try:
        with open_regular(path, text=True, error=error) as f:
            return json.load(f)
    except FileNotFoundError:
        raise error(f"{path}: no such file") from None
    except json.JSONDecodeError as exc:
        raise error(f"{path}: malformed JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}") from None
    except UnicodeDecodeError as exc:
        raise error(f"{path}: not UTF-8 text (byte {exc.start})") from None


def write_json(path: str, data: object) -> None:
    """Write ``data`` as JSON through a fresh temporary file and a rename (``capcli.safeio``): never
    a half-written file, and never through a symlink planted at ``path``."""
    text = json.dumps(data)  # the C encoder; json.dump() streams through the slow Python one
    with atomic_write(path, text=True) as f:
        f.write(text)
