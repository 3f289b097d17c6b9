"""Order-preserving parallel maps with bounded memory, for prep's image work.

:func:`ordered_map` suits small results. :func:`ordered_map_into` is for large array results
(decoded image batches): workers write straight into a ring of shared-memory slots and send back
only small metadata, so the parent does not spend its time receiving and unpickling pixels.
The ring is sized to what /dev/shm has free (Docker gives containers 64 MB by default): fewer
slots, or no ring at all, rather than a worker killed by SIGBUS when shared memory runs out.

A worker that dies (the kernel's out-of-memory killer sends SIGKILL) ends the map with
:class:`WorkerDied` naming it, never a hang. The ring's name is removed from /dev/shm before any
worker starts (the workers inherit its mapping through fork), so not even a SIGKILL of the parent
leaves a segment behind; names left by an older crash are swept on the next run.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import secrets
import signal
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from multiprocessing import context as mp_context
from multiprocessing import shared_memory
from typing import TypeVar

import numpy as np

from capcli.errors import CapcliError

T = TypeVar("T")
R = TypeVar("R")

SHM_FOLDER = "/dev/shm"
SHM_PREFIX = "capcli-ring-"  # + the creating process's pid + "-" + a random token
_worker_slots: np.ndarray | None = None  # the shared slots, set before the workers fork (they inherit it)


class WorkerDied(CapcliError):
    """A worker process ended without being asked to (killed by a signal, or exited)."""

    def __init__(self, pid: int | None, exitcode: int | None) -> None:
        self.pid, self.exitcode = pid, exitcode
        super().__init__(f"a worker (pid {pid}) died ({_how_it_ended(exitcode)})")

    def describe(self, role: str) -> str:
        """The message with the worker's role: ``a prep worker (pid 12) died (...)``."""
        return f"a {role} worker (pid {self.pid}) died ({_how_it_ended(self.exitcode)})"


def _how_it_ended(exitcode: int | None) -> str:
    if exitcode is None or exitcode >= 0:
        return f"exit code {exitcode}" if exitcode is not None else "reason unknown"
    try:
        name = signal.Signals(-exitcode).name
    except ValueError:
        name = f"signal {-exitcode}"
    return f"killed by {name}, perhaps out of memory" if -exitcode == signal.SIGKILL else f"killed by {name}"


_pool_parent: int | None = None  # the pid that starts the pool (its workers read it after fork)


def _worker_start() -> None:
    """Workers leave Ctrl-C and SIGTERM handling to the parent, which stops the pool: a worker
    ignores SIGINT, dies quietly of SIGTERM, and dies with the parent (Linux), never printing."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    with contextlib.suppress(Exception):  # Linux only: PR_SET_PDEATHSIG, so no worker outlives a killed parent
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL))
    if _pool_parent is not None and os.getppid() != _pool_parent:
        os._exit(0)  # the parent died before the line above took effect


class _TrackingFork(mp_context.ForkContext):
    """The fork context, remembering every process it starts (to name one that died)."""

    def __init__(self) -> None:
        super().__init__()
        self.started: list = []

    def Process(self, *args, **kwargs):  # noqa: N802 (multiprocessing's name)
        process = mp_context.ForkProcess(*args, **kwargs)
        self.started.append(process)
        return process


def _the_dead(processes: list) -> WorkerDied:
    """The worker that broke the pool: killed by something other than the pool's own SIGTERM
    where there is one, else the first that ended with a failure."""
    codes = [(p.pid, p.exitcode) for p in processes]
    for pid, code in codes:
        if code is not None and code != 0 and code != -signal.SIGTERM:
            return WorkerDied(pid, code)
    failed = [(pid, code) for pid, code in codes if code]
    return WorkerDied(*(failed[0] if failed else (None, None)))


@contextlib.contextmanager
def _pool(workers: int) -> Iterator[ProcessPoolExecutor]:
    """A fork pool whose workers ignore interrupts. Leaving it early (an error, a signal, a
    consumer that stops) kills the workers at once; a worker that dies raises WorkerDied."""
    global _pool_parent
    _pool_parent = os.getpid()
    forks = _TrackingFork()
    executor = ProcessPoolExecutor(workers, mp_context=forks, initializer=_worker_start)
    done = False
    try:
        yield executor
        done = True
    except BrokenProcessPool:
        executor.shutdown(wait=True, cancel_futures=True)
        raise _the_dead(forks.started) from None
    finally:
        if not done:
            for process in forks.started:
                with contextlib.suppress(Exception):
                    process.kill()
        executor.shutdown(wait=True, cancel_futures=True)


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
    with _pool(workers) as pool:
        for handle in _in_order(lambda item: pool.submit(func, item), items, workers * window_per_worker):
            yield handle.result()


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


def _sweep_stale_segments(folder: str = SHM_FOLDER) -> None:
    """Remove ring segments whose creating process is gone (a crash between creating and
    unlinking one, or a version of capcli that kept the name)."""
    with contextlib.suppress(OSError):
        for entry in os.listdir(folder):
            if not entry.startswith(SHM_PREFIX):
                continue
            pid = entry[len(SHM_PREFIX):].split("-", 1)[0]
            try:
                os.kill(int(pid), 0)
            except (ValueError, ProcessLookupError):
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(folder, entry))
            except PermissionError:
                pass  # another user's live process


def _new_segment(size: int) -> shared_memory.SharedMemory:
    name = f"{SHM_PREFIX}{os.getpid()}-{secrets.token_hex(4)}"
    return shared_memory.SharedMemory(name=name, create=True, size=max(1, size))


def _reserved(size: int) -> shared_memory.SharedMemory | None:
    """A shared-memory block whose pages are all allocated now (so a full /dev/shm is an error
    here, not a SIGBUS in a worker later), or None where there is no room. Its name is already
    removed: only this process's mapping (and its forks') holds it."""
    _sweep_stale_segments()
    memory = _new_segment(size)
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
        memory = _new_segment(size)
    memory.unlink()
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


def _through_ring(func: Callable, items: Iterable, workers: int, memory: shared_memory.SharedMemory,
                  shape: tuple[int, ...], dtype: str) -> Iterator[tuple[object, np.ndarray]]:
    global _worker_slots
    slots = _worker_slots = np.ndarray(shape, dtype=dtype, buffer=memory.buf)  # the workers fork with it
    free = deque(range(shape[0]))
    try:
        with _pool(workers) as pool:
            def submit(item):
                slot = free.popleft()
                return slot, pool.submit(_call_in_slot, func, slot, item)

            for slot, result in _in_order(submit, items, shape[0]):
                yield result.result(), slots[slot]
                free.append(slot)
    finally:
        _worker_slots = None
        del slots  # the buffer's last view, so the mapping can close


def _mb(size: int | None) -> str:
    return "an unknown amount" if size is None else f"{size / 2 ** 20:.0f} MB"
