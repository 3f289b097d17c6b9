"""What a watcher of a run needs besides its loss: speed, waiting for data and device memory.

A :class:`StepMeter` wraps the training loader and counts the caption pairs and images of each
step; at each feed step line its :meth:`figures` give the rates since the previous line, the
share of that time spent waiting for the next batch, and CUDA memory (null on other devices).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator

import torch

_MIB = 2.0 ** 20


def memory_figures(device: torch.device) -> dict[str, float | None]:
    """``mem_mb`` (allocated by tensors now) and ``peak_mem_mb`` (its peak so far), CUDA only."""
    if device.type != "cuda":
        return {"mem_mb": None, "peak_mem_mb": None}
    return {"mem_mb": round(torch.cuda.memory_allocated(device) / _MIB, 1),
            "peak_mem_mb": round(torch.cuda.max_memory_allocated(device) / _MIB, 1)}


class StepMeter:
    """Throughput of the steps between two feed lines (see the module docstring)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._restart()

    def _restart(self) -> None:
        self.since, self.waited, self.pairs, self.images = time.perf_counter(), 0.0, 0, 0

    def timed(self, batches: Iterable) -> Iterator:
        """Yield the batches of ``batches``, adding the time each took to arrive to the wait."""
        iterator = iter(batches)
        while True:
            asked = time.perf_counter()
            try:
                batch = next(iterator)
            except StopIteration:
                return
            self.waited += time.perf_counter() - asked
            yield batch

    def count(self, pairs: int, images: int) -> None:
        """One step trained on ``pairs`` image–caption pairs of ``images`` images."""
        self.pairs += pairs
        self.images += images

    def figures(self) -> dict[str, float | None]:
        """The feed's step-line fields since the last call (or the start), then start counting anew."""
        elapsed = max(time.perf_counter() - self.since, 1e-9)
        figures = {"pairs_per_s": round(self.pairs / elapsed, 2), "images_per_s": round(self.images / elapsed, 2),
                   "data_wait": round(min(self.waited / elapsed, 1.0), 4), **memory_figures(self.device)}
        self._restart()
        return figures
