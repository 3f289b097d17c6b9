"""capcli keeps freed memory in the process (glibc), unless the user set malloc options."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                                reason="glibc's mallopt")

# allocate, free and allocate again 16 MB (under every glibc's mmap threshold cap, 32 MB, so the
# test holds where only that is accepted); print whether the options were set and the page
# faults of the second allocation
REUSE = """
import resource
from capcli.allocator import keep_freed_memory
print(keep_freed_memory())
block = bytearray(16 << 20)
del block
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
block = bytearray(16 << 20)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _reuse(**env: str) -> tuple[str, int]:
    environment = {k: v for k, v in os.environ.items()
                   if k not in ("GLIBC_TUNABLES", "LD_PRELOAD") and not k.startswith("MALLOC_")}
    out = subprocess.run([sys.executable, "-c", REUSE], env={**environment, **env}, capture_output=True,
                         text=True, check=True).stdout.split()
    return out[0], int(out[1])


def test_freed_memory_is_reused_without_page_faults():
    kept, faults = _reuse()
    assert kept == "True"
    assert faults < 100  # 16 MB is 4,096 pages: the second block reuses the first's memory
    untouched, default_faults = _reuse(GLIBC_TUNABLES="glibc.malloc.check=0")
    assert untouched == "False"  # the user's malloc options win
    # glibc's defaults fault the block in again: 4,096 faults here, fewer with transparent huge pages
    assert default_faults > faults


def test_malloc_environment_and_preloaded_allocators_are_left_alone():
    assert _reuse(MALLOC_TRIM_THRESHOLD_="131072")[0] == "False"
    assert _reuse(LD_PRELOAD="libjemalloc-not-here.so")[0] == "False"
