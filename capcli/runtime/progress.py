"""Progress reporting that services can use without printing themselves.

A service receives a :class:`Progress` and calls ``task()`` for each long loop. The CLI passes
:class:`TerminalProgress` (tqdm bars on a terminal, plain periodic lines when piped); tests and
the dashboard pass :data:`SILENT` or their own implementation.
"""

from __future__ import annotations

import sys
import time
import weakref
from typing import Protocol, TextIO


class Task(Protocol):
    def advance(self, n: int = 1) -> None: ...

    def show(self, text: str) -> None:
        """Set a short status text (e.g. ``loss 2.31 top-5 71.2``) shown with the progress."""

    def close(self) -> None: ...


class Progress(Protocol):
    def task(self, description: str, total: int | None, unit: str = "it") -> Task: ...

    def message(self, text: str) -> None: ...


class _SilentTask:
    def advance(self, n: int = 1) -> None:
        pass

    def show(self, text: str) -> None:
        pass

    def close(self) -> None:
        pass


class SilentProgress:
    """Reports nothing."""

    def task(self, description: str, total: int | None, unit: str = "it") -> Task:
        return _SilentTask()

    def message(self, text: str) -> None:
        pass


SILENT = SilentProgress()


class _LineTask:
    """Plain ``description: done/total`` lines at most every ``interval`` seconds."""

    def __init__(self, stream: TextIO, description: str, total: int | None, unit: str,
                 interval: float) -> None:
        self.stream, self.description, self.total, self.unit = stream, description, total, unit
        self.interval = interval
        self.done = 0
        self.status = ""
        self.start = self.last = time.monotonic()

    def advance(self, n: int = 1) -> None:
        self.done += n
        now = time.monotonic()
        if now - self.last >= self.interval:
            self.last = now
            self._line(now)

    def show(self, text: str) -> None:
        self.status = text

    def _line(self, now: float) -> None:
        rate = self.done / max(now - self.start, 1e-9)
        of = f"/{self.total}" if self.total is not None else ""
        status = f" {self.status}" if self.status else ""
        print(f"{self.description}: {self.done}{of} {self.unit} ({rate:.1f} {self.unit}/s){status}",
              file=self.stream, flush=True)

    def close(self) -> None:
        self._line(time.monotonic())


# bars not closed yet: a service that raises mid-loop leaves its bar drawn, and the error
# boundary wipes it (close_open_bars) so the error message starts on a line of its own
_OPEN_BARS: weakref.WeakSet[_BarTask] = weakref.WeakSet()


class _BarTask:
    """A tqdm bar that disappears when closed, so a finished command leaves only its messages."""

    def __init__(self, stream: TextIO, description: str, total: int | None, unit: str) -> None:
        from tqdm import tqdm

        self.bar = tqdm(total=total, desc=description, unit=unit, file=stream, dynamic_ncols=True,
                        leave=False)
        _OPEN_BARS.add(self)

    def advance(self, n: int = 1) -> None:
        self.bar.update(n)

    def show(self, text: str) -> None:
        self.bar.set_postfix_str(text, refresh=False)  # drawn with the next update, not per call

    def close(self) -> None:
        self.bar.close()
        _OPEN_BARS.discard(self)


def close_open_bars() -> None:
    """Wipe every bar still drawn (a loop that raised never closed its task); safe to call twice."""
    for task in list(_OPEN_BARS):
        task.close()


class TerminalProgress:
    """tqdm bars when ``stream`` is a terminal, periodic plain lines otherwise."""

    def __init__(self, stream: TextIO | None = None, interval: float = 10.0) -> None:
        self.stream = stream or sys.stderr
        self.interval = interval
        self.is_tty = self.stream.isatty()

    def task(self, description: str, total: int | None, unit: str = "it") -> Task:
        if self.is_tty:
            return _BarTask(self.stream, description, total, unit)
        return _LineTask(self.stream, description, total, unit, self.interval)

    def message(self, text: str) -> None:
        if self.is_tty:
            from tqdm import tqdm

            tqdm.write(text, file=self.stream)  # clears any bar, writes, redraws it below
            self.stream.flush()
        else:
            print(text, file=self.stream, flush=True)
