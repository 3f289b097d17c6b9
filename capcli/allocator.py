"""The process's memory allocator (no torch import: the CLI calls this before anything heavy)."""

from __future__ import annotations

import ctypes
import functools
import os
import platform

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt parameters (malloc.h)


@functools.cache  # once per process: later calls (the bench's report) return the first answer
def keep_freed_memory() -> bool:
    """Let glibc keep freed memory for the next batch instead of handing it back to the OS.

    By default glibc serves each allocation over 32 MB (at most) with its own mmap, unmapped on
    free, and trims the heap's free top: a ResNet's activation maps and decoding's buffers were
    page-faulted in anew on every batch (195,000 faults per 32-image fp32 resnet34 batch, 256²).
    With mmap for 256 MB and more only and trimming above 1 GB free, that encoder ran 34 → 47
    images/s in fp32 and 69 → 88 in bf16 on this project's 2-core machine. Freed memory stays
    with the process (up to 1 GB; each DataLoader worker is a process of its own), and peak memory
    rose ~4 %. Older glibc caps the mmap threshold at 32 MB: that is used there. Left alone where
    the user set malloc options (GLIBC_TUNABLES with malloc, any MALLOC_ variable), preloads
    another allocator (LD_PRELOAD naming malloc, e.g. jemalloc or tcmalloc) or the C library is
    not glibc; returns whether the options were set.
    """
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    if "malloc" in os.environ.get("GLIBC_TUNABLES", "") or any(k.startswith("MALLOC_") for k in os.environ):
        return False
    if "malloc" in os.environ.get("LD_PRELOAD", ""):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    if not (mallopt(_M_MMAP_THRESHOLD, 256 << 20) or mallopt(_M_MMAP_THRESHOLD, 32 << 20)):
        return False
    return bool(mallopt(_M_TRIM_THRESHOLD, 1 << 30))
