"""Order-preserving parallel maps with bounded memory, for prep's image work.

:func:`ordered_map` suits small results. :func:`ordered_map_into` is for large array results
(decoded image batches): workers write straight into a ring of shared-memory slots and send back
only small metadata, so the parent does not spend its time receiving and unpickling pixels.
The ring is sized to what /dev/shm has free (Docker gives containers 64 MB by default): fewer
slots, or no ring at all, rather than a worker killed by SIGBUS when shared memory runs out.
"""

from __future__ import annotations

import errno
import functools
import multiprocessing
import os
import signal
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from multiprocessing import shared_memory
from typing import TypeVar

import numpy as np

T = TypeVar("T")
R = TypeVar("R")

SHM_FOLDER = "/dev/shm"
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


def shared_memory_budget(folder: str = SHM_FOLDER) -> int | None:
    """Bytes the ring may take: half of what ``folder`` has free (others use it too); None where
    there is no such folder to measure."""
    try:
        stats = os.statvfs(folder)
    except OSError:
        return None
    return stats.f_bavail * stats.f_frsize // 2


def _in_own_buffer(func: Callable, shape: tuple[int, ...], dtype: str, item: object) -> tuple[object, np.ndarray]:
    out = np.empty(shape, dtype=dtype)
    return func(item, out), out


def _reserved(size: int) -> shared_memory.SharedMemory | None:
    """A shared-memory block whose pages are all allocated now (so a full /dev/shm is an error
    here, not a SIGBUS in a worker later), or None where there is no room."""
    memory = shared_memory.SharedMemory(create=True, size=max(1, size))
    fd = getattr(memory, "_fd", -1)
    try:
        if fd >= 0:
            os.posix_fallocate(fd, 0, max(1, size))
    except OSError as exc:
        memory.close()
        memory.unlink()
        if exc.errno in (errno.ENOSPC, errno.ENOMEM, errno.EFBIG):
            return None
        if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
            raise
        return shared_memory.SharedMemory(create=True, size=max(1, size))
    return memory


def ordered_map_into(func: Callable[[T, np.ndarray], R], items: Iterable[T], workers: int,
                     out_shape: tuple[int, ...], dtype: str = "uint8", window_per_worker: int = 4,
                     on_shrink: Callable[[str], None] | None = None) -> Iterator[tuple[R, np.ndarray]]:
    """Yield ``(func(item, out), out)`` in input order; ``func`` fills the array ``out``.

    ``out`` (of ``out_shape``) is only valid until the next item is requested. ``workers <= 1``
    runs in this process with a single buffer. Where shared memory has too little room for the
    ring, it gets fewer slots (at least one per worker), or the workers send their arrays back
    through the pool's pipes; ``on_shrink`` is told which, in one line.
    """
    if workers <= 1:
        out = np.empty(out_shape, dtype=dtype)
        for item in items:
            yield func(item, out), out
        return
    slot_bytes = int(np.prod(out_shape)) * np.dtype(dtype).itemsize
    n_slots, budget = workers * window_per_worker, shared_memory_budget()
    if budget is not None and n_slots * slot_bytes > budget:
        n_slots = max(budget // max(slot_bytes, 1), 0)
    memory = _reserved(n_slots * slot_bytes) if n_slots >= workers else None
    if memory is None:
        if on_shrink:
            on_shrink(f"{SHM_FOLDER} has room for {_mb(budget)}, too little for {workers} workers' image slots "
                      f"({_mb(workers * slot_bytes)}): images come back through pipes instead (slower; "
                      "`capcli env` shows /dev/shm)")
        yield from ordered_map(functools.partial(_in_own_buffer, func, out_shape, dtype), items, workers,
                               window_per_worker)
        return
    if n_slots < workers * window_per_worker and on_shrink:
        on_shrink(f"{SHM_FOLDER} has room for {_mb(budget)}: {n_slots} image slots of {_mb(slot_bytes)} "
                  f"instead of {workers * window_per_worker} (`capcli env` shows /dev/shm)")
    try:
        yield from _through_ring(func, items, workers, memory, (n_slots, *out_shape), dtype)
    finally:
        memory.close()
        memory.unlink()


def _through_ring(func: Callable, items: Iterable, workers: int, memory: shared_memory.SharedMemory,
                  shape: tuple[int, ...], dtype: str) -> Iterator[tuple[object, np.ndarray]]:
    slots = np.ndarray(shape, dtype=dtype, buffer=memory.buf)
    free = deque(range(shape[0]))
    try:
        with multiprocessing.get_context("fork").Pool(workers, _attach_slots, (memory.name, shape, dtype)) as pool:
            def submit(item):
                slot = free.popleft()
                return slot, pool.apply_async(_call_in_slot, (func, slot, item))

            for slot, result in _in_order(submit, items, shape[0]):
                yield result.get(), slots[slot]
                free.append(slot)
    finally:
        del slots  # the buffer's last view, so the mapping can close


def _mb(size: int | None) -> str:
    return "an unknown amount" if size is None else f"{size / 2 ** 20:.0f} MB"
