"""The process's memory allocator, tuned for CPU runs only (no torch import at module level).

``CAPCLI_MALLOC_TUNING`` decides: ``auto`` (or unset) tunes runs whose model is on the CPU,
``1`` tunes every run that has a device (GPU runs too), ``0`` never tunes. Figures and how to
reproduce them: docs/performance.md.
"""

from __future__ import annotations

import ctypes
import functools
import os
import platform

from capcli.errors import CapcliError

SWITCH = "CAPCLI_MALLOC_TUNING"
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt parameters (malloc.h)


def tuning_wanted(device: str) -> bool:
    """Whether a run on ``device`` (``auto``, ``cpu``, ``cuda:N``…) should tune malloc: measured only on the CPU.

    Raises:
        CapcliError: ``CAPCLI_MALLOC_TUNING`` holds something other than auto, 1 or 0.
    """
    setting = os.environ.get(SWITCH, "auto").strip().lower() or "auto"
    if setting in ("1", "0"):
        return setting == "1"
    if setting != "auto":
        raise CapcliError(f"{SWITCH}={setting}: use auto (CPU runs only, the default), 1 (always) or 0 (never)")
    if device == "auto":
        import torch

        return not torch.cuda.is_available()
    return device == "cpu"


def tune_for_device(device: str) -> bool:
    """Keep freed memory for reuse when a run on ``device`` gains from it; returns whether malloc is tuned."""
    return tuning_wanted(device) and keep_freed_memory()


@functools.cache  # once per process: later calls (the bench's report) return the first answer
def keep_freed_memory() -> bool:
    """Let glibc keep freed memory for the next batch instead of paging it in again (mmap only from
    256 MB, trim above 1 GB free; older glibc caps the mmap threshold at 32 MB: that is used there).

    Left alone where the user set malloc options (GLIBC_TUNABLES with malloc, any MALLOC_ variable),
    preloads another allocator (LD_PRELOAD naming malloc, e.g. jemalloc or tcmalloc) or the C
    library is not glibc; returns whether the options were set.
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
