"""Signals during ``capcli prep``: SIGINT, SIGTERM and SIGHUP end it with one line (exit 128 + the
signal) instead of a traceback per worker; they wait while the new set is swapped in."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from dataclasses import dataclass

from capcli.errors import Interrupted

_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


@dataclass
class Stop:
    """What the signal handler knows: whether the new set is in place, and the signal that came."""

    committed: bool = False
    signum: int | None = None

    def interrupted(self, signum: int) -> Interrupted:
        done = "the new set was already in place" if self.committed else "nothing was changed"
        return Interrupted(f"prep stopped by {signal.Signals(signum).name}; {done}", signum)


@contextlib.contextmanager
def stopped_by_signals() -> Iterator[Stop]:
    """SIGINT, SIGTERM and SIGHUP raise :class:`Interrupted` (one line, exit 128 + the signal);
    leaving the worker pool stops the workers, and the staging folder is removed."""
    stop = Stop()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def handler(signum, frame):
        stop.signum = signum
        raise stop.interrupted(signum)

    previous = {s: signal.signal(s, handler) for s in _STOP_SIGNALS}
    try:
        yield stop
    finally:
        for s, old in previous.items():
            signal.signal(s, old)


@contextlib.contextmanager
def signals_held() -> Iterator[None]:
    """Signals wait while the new set is swapped in (they are handled right after)."""
    old = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
