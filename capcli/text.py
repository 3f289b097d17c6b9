"""Text that came from a file, made safe to show.

Names and strings read from caption files, checkpoints, bundles, feeds and lock files may hold
anything a colleague or a damaged disk put there: escape sequences that retitle the terminal, write
its clipboard or clear the screen, newlines that split a line, Rich markup. Everything capcli prints
that came from a file goes through :func:`visible` (the terminal) or :func:`markup_safe` (Rich
markup, as the dashboard shows it); names are checked where they are read
(:func:`capcli.config.dataset_name_problem`, :func:`capcli.config.run_name_problem`).
"""

from __future__ import annotations

import unicodedata

# C0 and C1 controls, DEL, and the format characters that reorder or hide text (bidi overrides,
# zero-width joiners): shown as an escape, never passed on
_HIDDEN_CATEGORIES = ("Cc", "Cf", "Cs", "Zl", "Zp")


def _shown(char: str) -> str:
    if unicodedata.category(char) not in _HIDDEN_CATEGORIES:
        return char
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def visible(text: object) -> str:
    """``text`` (``str()`` of it) with every control or invisible format character written as an
    escape (``ESC`` as ``\\x1b``, a newline as ``\\x0a``): safe to print on one line of a terminal."""
    text = str(text)
    if text.isprintable():
        return text
    return "".join(_shown(c) for c in text)


def markup_safe(text: object) -> str:
    """:func:`visible`, with Rich markup escaped: safe inside a Rich or Textual markup string."""
    from rich.markup import escape

    return escape(visible(text))
