"""Progress reporting that services can use without printing themselves.

A service receives a :class:`Progress` and calls ``task()`` for each long loop. The CLI passes
:class:`TerminalProgress` (tqdm bars on a terminal, plain periodic lines when piped); tests and
the dashboard pass :data:`SILENT` or their own implementation.
"""

from __future__ import annotations

import sys
import time
from typing import Protocol, TextIO


class Task(Protocol):
    def advance(self, n: int = 1) -> None: ...

    def close(self) -> None: ...


class Progress(Protocol):
    def task(self, description: str, total: int | None, unit: str = "it") -> Task: ...

    def message(self, text: str) -> None: ...


class _SilentTask:
    def advance(self, n: int = 1) -> None:
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
        self.start = self.last = time.monotonic()

    def advance(self, n: int = 1) -> None:
        self.done += n
        now = time.monotonic()
        if now - self.last >= self.interval:
            self.last = now
            self._line(now)

    def _line(self, now: float) -> None:
        rate = self.done / max(now - self.start, 1e-9)
        of = f"/{self.total}" if self.total is not None else ""
        print(f"{self.description}: {self.done}{of} {self.unit} ({rate:.1f} {self.unit}/s)",
              file=self.stream, flush=True)

    def close(self) -> None:
        self._line(time.monotonic())


class TerminalProgress:
    """tqdm bars when ``stream`` is a terminal, periodic plain lines otherwise."""

    def __init__(self, stream: TextIO | None = None, interval: float = 10.0) -> None:
        self.stream = stream or sys.stderr
        self.interval = interval
        self.is_tty = self.stream.isatty()

    def task(self, description: str, total: int | None, unit: str = "it") -> Task:
        if self.is_tty:
            from tqdm import tqdm

            return tqdm(total=total, desc=description, unit=unit, file=self.stream,
                        dynamic_ncols=True, leave=False)
        return _LineTask(self.stream, description, total, unit, self.interval)

    def message(self, text: str) -> None:
        print(text, file=self.stream, flush=True)
