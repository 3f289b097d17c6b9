"""Signals during ``capcli prep``: SIGINT, SIGTERM and SIGHUP end it with one line (exit 128 + the
signal) instead of a traceback per worker; they wait while the new set is swapped in."""

from __future__ import annotations

import contextlib
import signal
import sys
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
    leaving the worker pool stops the workers, and the staging folder is removed.

    A handler runs wherever the main thread is, and an exception raised while Python runs a weakref
    callback or a ``__del__`` is printed as "Exception ignored" and dropped. Such an ``Interrupted``
    is kept quiet and the stop is raised again a millisecond later (SIGALRM), outside the callback."""
    stop = Stop()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def handler(signum, frame):
        stop.signum = signum
        raise stop.interrupted(signum)

    def again(signum, frame):
        raise stop.interrupted(stop.signum)

    def dropped(unraisable):
        if isinstance(unraisable.exc_value, Interrupted) and stop.signum is not None:
            signal.setitimer(signal.ITIMER_REAL, 0.001)
        else:
            previous_hook(unraisable)

    previous = {s: signal.signal(s, handler) for s in _STOP_SIGNALS}
    previous[signal.SIGALRM] = signal.signal(signal.SIGALRM, again)
    previous_hook, sys.unraisablehook = sys.unraisablehook, dropped
    try:
        yield stop
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        sys.unraisablehook = previous_hook
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
