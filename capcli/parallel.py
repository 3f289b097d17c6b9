"""Order-preserving parallel maps with bounded memory, for prep's image work.

:func:`ordered_map` suits small results. :func:`ordered_map_into` is for large array results
(decoded image batches): workers write straight into a ring of shared-memory slots and send back
only small metadata, so the parent does not spend its time receiving and unpickling pixels.
"""

from __future__ import annotations

import multiprocessing
import signal
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from multiprocessing import shared_memory
from typing import TypeVar

import numpy as np

T = TypeVar("T")
R = TypeVar("R")

_worker_slots: np.ndarray | None = None  # each worker's view of the shared slots (set by _attach_slots)
_worker_memory: shared_memory.SharedMemory | None = None  # keeps that mapping alive


def _ignore_interrupts() -> None:
    """Workers leave Ctrl-C to the parent, which stops the pool (no traceback per worker)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _in_order(submit: Callable[[T], object], items: Iterable[T], window: int) -> Iterator:
    """Submit items, yielding their handles in order with at most ``window`` outstanding.

    A handle is yielded before the next item is submitted, so whatever the consumer frees
    while holding it (a slot) is free again for that submission.
    """
    pending: deque = deque()
    for item in items:
        pending.append(submit(item))
        if len(pending) >= window:
            yield pending.popleft()
    while pending:
        yield pending.popleft()


def ordered_map(func: Callable[[T], R], items: Iterable[T], workers: int,
                window_per_worker: int = 8) -> Iterator[R]:
    """Yield ``func(item)`` in input order, running up to ``workers`` processes.

    At most ``workers * window_per_worker`` results are in flight, so memory stays bounded
    however many items there are. ``workers <= 1`` runs in this process.
    """
    if workers <= 1:
        yield from map(func, items)
        return
    with multiprocessing.get_context("fork").Pool(workers, _ignore_interrupts) as pool:
        for handle in _in_order(lambda item: pool.apply_async(func, (item,)), items, workers * window_per_worker):
            yield handle.get()


def _attach_slots(name: str, shape: tuple[int, ...], dtype: str) -> None:
    global _worker_slots, _worker_memory
    _ignore_interrupts()
    _worker_memory = shared_memory.SharedMemory(name=name)
    _worker_slots = np.ndarray(shape, dtype=dtype, buffer=_worker_memory.buf)


def _call_in_slot(func: Callable, slot: int, item: object) -> object:
    return func(item, _worker_slots[slot])


def ordered_map_into(func: Callable[[T, np.ndarray], R], items: Iterable[T], workers: int,
                     out_shape: tuple[int, ...], dtype: str = "uint8",
                     window_per_worker: int = 4) -> Iterator[tuple[R, np.ndarray]]:
    """Yield ``(func(item, out), out)`` in input order; ``func`` fills the array ``out``.

    ``out`` (of ``out_shape``) is only valid until the next item is requested. ``workers <= 1``
    runs in this process with a single buffer.
    """
    if workers <= 1:
        out = np.empty(out_shape, dtype=dtype)
        for item in items:
            yield func(item, out), out
        return
    n_slots = workers * window_per_worker
    shape = (n_slots, *out_shape)
    memory = shared_memory.SharedMemory(create=True, size=max(1, int(np.prod(shape)) * np.dtype(dtype).itemsize))
    try:
        slots = np.ndarray(shape, dtype=dtype, buffer=memory.buf)
        free = deque(range(n_slots))
        with multiprocessing.get_context("fork").Pool(workers, _attach_slots, (memory.name, shape, dtype)) as pool:
            def submit(item):
                slot = free.popleft()
                return slot, pool.apply_async(_call_in_slot, (func, slot, item))

            for slot, result in _in_order(submit, items, n_slots):
                yield result.get(), slots[slot]
                free.append(slot)
        del slots
    finally:
        memory.close()
        memory.unlink()
