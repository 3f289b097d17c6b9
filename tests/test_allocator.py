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
from capcli.runtime.allocator import keep_freed_memory
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


# what the CLI does once the device is known: tune for this device, print whether malloc was tuned
FOR_DEVICE = """
import sys
from capcli.runtime.allocator import tune_for_device
print(tune_for_device(sys.argv[1]))
"""


def _for_device(device: str, **env: str) -> str:
    environment = {k: v for k, v in os.environ.items()
                   if k not in ("GLIBC_TUNABLES", "LD_PRELOAD", "CAPCLI_MALLOC_TUNING") and not k.startswith("MALLOC_")}
    done = subprocess.run([sys.executable, "-c", FOR_DEVICE, device], env={**environment, **env},
                          capture_output=True, text=True)
    return done.stdout.strip() or done.stderr.strip().splitlines()[-1]


def test_only_cpu_runs_are_tuned_unless_the_switch_says_otherwise():
    assert _for_device("cpu") == "True"
    assert _for_device("cuda:0") == "False"  # GPU boxes: glibc's defaults (the gain was measured on CPUs)
    assert _for_device("cuda:0", CAPCLI_MALLOC_TUNING="1") == "True"
    assert _for_device("cpu", CAPCLI_MALLOC_TUNING="0") == "False"
    assert _for_device("cpu", CAPCLI_MALLOC_TUNING="auto") == "True"
    assert _for_device("cpu", CAPCLI_MALLOC_TUNING="1", MALLOC_ARENA_MAX="2") == "False"  # the user's own wins
    assert "CAPCLI_MALLOC_TUNING=maybe" in _for_device("cpu", CAPCLI_MALLOC_TUNING="maybe")


def test_auto_device_is_tuned_only_without_cuda():
    import torch

    assert _for_device("auto") == str(not torch.cuda.is_available())


def test_the_cli_tunes_cpu_runs_and_bench_reports_it(tmp_path):
    """`capcli bench --device cpu` (an --only that matches nothing: no measurement runs) prints
    whether malloc was tuned in its first line; both sides of the switch."""
    def first_line(**env: str) -> str:
        environment = {k: v for k, v in os.environ.items() if k != "CAPCLI_MALLOC_TUNING"}
        done = subprocess.run([sys.executable, "-m", "capcli.cli", "bench", "--device", "cpu", "--only", "nothing"],
                              env={**environment, **env}, capture_output=True, text=True, cwd=tmp_path, timeout=120)
        assert done.returncode == 1 and "no measurement matches" in done.stderr
        return done.stdout.splitlines()[0]

    assert "malloc options left as they were" not in first_line()
    assert "malloc options left as they were" in first_line(CAPCLI_MALLOC_TUNING="0")
