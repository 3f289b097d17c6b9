"""An order-preserving parallel map with bounded memory, for prep's image work."""

from __future__ import annotations

import multiprocessing
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


def ordered_map(func: Callable[[T], R], items: Iterable[T], workers: int,
                window_per_worker: int = 8) -> Iterator[R]:
    """Yield ``func(item)`` in input order, running up to ``workers`` processes.

    At most ``workers * window_per_worker`` results are in flight, so memory stays bounded
    however many items there are. ``workers <= 1`` runs in this process.
    """
    if workers <= 1:
        yield from map(func, items)
        return
    context = multiprocessing.get_context("fork")
    with context.Pool(workers) as pool:
        pending: deque = deque()
        for item in items:
            pending.append(pool.apply_async(func, (item,)))
            if len(pending) >= workers * window_per_worker:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()
