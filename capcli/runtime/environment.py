"""What ``capcli env`` reports: the software, the torch build and what it sees, the CPU as capcli's
kernels see it, the precision ``--precision auto`` picks, Java for METEOR and SPICE, the room in
/dev/shm and in the data and output folders, and which pretrained weights are cached.

:func:`gather` only reads and never prints. Torch is imported here, lazily, and a torch that does
not import is reported rather than raised; every probe that fails reads ``"unknown"`` (the reason
goes to the debug log), so the command works on the broken machines whose bug reports need it most.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import platform
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from capcli import __version__
from capcli.errors import first_line

FORMAT = 1  # the --json layout: raised when a key goes or changes meaning
UNKNOWN = "unknown"
SHM_LOW_BYTES = 1 << 30  # below this free, DataLoader workers and prep's workers may run out of room
# settings read by torch, oneDNN or capcli that change what the CPU runs (shown when set)
CPU_VARIABLES = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "CAPCLI_CPU_KERNELS", "CAPCLI_MALLOC_TUNING",
                 "OMP_NUM_THREADS")
T = TypeVar("T")
Probe = Callable[[Callable[[], T]], "T | str"]
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Software:
    capcli: str
    python: str
    executable: str
    platform: str
    os: str


@dataclass(frozen=True)
class TorchInfo:
    version: str
    import_error: str | None  # why ``import torch`` failed; None when it imports
    torchvision: str | None  # None: not installed
    torchvision_problem: str | None  # torch_compat.torchvision_mismatch(): None when they match
    tested: bool | str  # inside capcli's tested range
    tested_range: str  # e.g. "2.4 to 2.14"


@dataclass(frozen=True)
class Gpu:
    index: int
    name: str
    memory_bytes: int
    capability: str  # CUDA compute capability, e.g. "9.0"


@dataclass(frozen=True)
class Accelerators:
    cuda_build: str | None  # torch.version.cuda: None for a CPU-only build
    cuda_available: bool | str
    gpus: tuple[Gpu, ...] | str
    cudnn: int | None | str  # torch.backends.cudnn.version()
    cuda_visible_devices: str | None
    mps_available: bool | str


@dataclass(frozen=True)
class Cpu:
    model: str
    logical_cores: int | str  # os.cpu_count(), what `nproc --all` counts
    usable_cores: int | str  # the cores this process may run on (affinity, what `nproc` counts)
    torch_threads: int | str
    capability: str  # torch's vector instruction set, lowered by ATEN_CPU_CAPABILITY
    native_bf16: bool | str
    amx: bool | str
    variables: dict[str, str]  # CPU_VARIABLES that are set
    fast_paths: dict[str, str] | str  # capcli.model.cpu.status(): kernel group → "on" or "off (why)"


@dataclass(frozen=True)
class Java:
    path: str | None  # None: no java on PATH or in JAVA_HOME
    version: str | None  # the first line `java -version` prints
    java_home: str | None
    pycocoevalcap: bool | str


@dataclass(frozen=True)
class Space:
    folder: str  # as given
    measured: str | None  # the folder, or its nearest existing parent; None: no such folder (/dev/shm)
    exists: bool
    total_bytes: int | str | None
    free_bytes: int | str | None  # what an unprivileged user may write, as df's "avail"


@dataclass(frozen=True)
class CachedWeights:
    path: str
    cached: bool
    bytes: int | None


@dataclass(frozen=True)
class Weights:
    hub_dir: str  # torch.hub.get_dir(): $TORCH_HOME/hub
    checkpoints: str  # where torchvision's downloads are kept
    files: dict[str, CachedWeights | str]  # encoder → its ImageNet weights file


@dataclass(frozen=True)
class Environment:
    format: int
    software: Software
    torch: TorchInfo
    accelerators: Accelerators
    cpu: Cpu
    precision_auto: dict[str, str]  # device → what --precision auto picks there
    java: Java
    shm: Space
    data_folder: Space
    output_folder: Space
    weights: Weights
    notes: tuple[str, ...]  # what may explain a problem, one line each

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def _torch():
    import torch

    return torch


def _compat():
    from capcli.runtime import torch_compat

    return torch_compat


def _soft(probe: Callable[[], T]) -> T | str:
    """``probe()``, or ``"unknown"`` when it fails: a report of the machine never fails on it."""
    try:
        return probe()
    except Exception as exc:  # noqa: BLE001 (any failure of a probe is a fact to report, not a crash)
        log.debug("capcli env: %s failed (%s: %s)", getattr(probe, "__name__", "a probe"), type(exc).__name__, exc)
        return UNKNOWN


def _skipped(probe: Callable[[], T]) -> str:
    """The probe of a torch that does not import: not run."""
    return UNKNOWN


def _torch_import_error() -> str | None:
    try:
        _torch()
    except Exception as exc:  # noqa: BLE001 (a broken install raises anything: OSError, ImportError...)
        return f"{type(exc).__name__}: {first_line(exc)}"
    return None


def _os_name() -> str:
    if sys.platform.startswith("linux"):
        try:
            return platform.freedesktop_os_release().get("PRETTY_NAME", "Linux")
        except OSError:
            return f"Linux {platform.release()}"
    if sys.platform == "darwin":
        return f"macOS {platform.mac_ver()[0]}"
    return f"{platform.system()} {platform.release()}".strip()


def software() -> Software:
    return Software(__version__, f"{platform.python_implementation()} {platform.python_version()}",
                    sys.executable, _soft(platform.platform), _soft(_os_name))


def _installed_version(package: str) -> str | None:
    """A package's version from its metadata, without importing it (a torch that does not import
    still has one); None when it is not installed."""
    from importlib import metadata

    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def torch_info(import_error: str | None, soft: Probe) -> TorchInfo:
    floor, newest = soft(lambda: _compat().TORCH_FLOOR), soft(lambda: _compat().TORCH_NEWEST_TESTED)
    tested_range = UNKNOWN if UNKNOWN in (floor, newest) else f"{floor[0]}.{floor[1]} to {newest[0]}.{newest[1]}"
    version = _soft(lambda: _compat().torch_version()) if import_error is None else \
        _soft(lambda: _installed_version("torch") or UNKNOWN)
    return TorchInfo(version, import_error, _soft(lambda: _installed_version("torchvision")),
                     soft(lambda: _compat().torchvision_mismatch()), soft(lambda: _compat().torch_tested()),
                     tested_range)


def _gpus() -> tuple[Gpu, ...]:
    torch = _torch()
    if not torch.cuda.is_available():
        return ()
    found = []
    for index in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(index)
        found.append(Gpu(index, props.name, int(props.total_memory), f"{props.major}.{props.minor}"))
    return tuple(found)


def accelerators(soft: Probe) -> Accelerators:
    def mps() -> bool:
        from capcli.runtime.device import mps_available

        return mps_available()

    return Accelerators(soft(lambda: _torch().version.cuda), soft(lambda: _torch().cuda.is_available()),
                        soft(_gpus), soft(lambda: _torch().backends.cudnn.version()),
                        os.environ.get("CUDA_VISIBLE_DEVICES"), soft(mps))


def cpu_model() -> str:
    """The CPU's name: /proc/cpuinfo's "model name" on Linux, else what ``platform`` says."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass  # no /proc (macOS, Windows): platform's answer below
    return platform.processor() or platform.machine() or UNKNOWN


def _usable_cores() -> int | None:
    affinity = getattr(os, "sched_getaffinity", None)
    return len(affinity(0)) if affinity is not None else os.cpu_count()


def cpu(soft: Probe) -> Cpu:
    def fast_paths() -> dict[str, str]:
        from capcli.model.cpu import status

        return status()

    variables = {name: os.environ[name] for name in CPU_VARIABLES if name in os.environ}
    return Cpu(_soft(cpu_model), _soft(os.cpu_count), _soft(_usable_cores), soft(lambda: _torch().get_num_threads()),
               soft(lambda: _compat().cpu_capability()), soft(lambda: _compat().cpu_supports_bf16()),
               soft(lambda: _compat().cpu_has_amx()), variables, soft(fast_paths))


def precision_auto(accel: Accelerators, soft: Probe) -> dict[str, str]:
    """What ``--precision auto`` picks on the CPU, and on CUDA and mps where they are there."""
    def pick(device: str) -> str:
        from capcli.runtime.device import resolve_precision

        return resolve_precision("auto", _torch().device(device)).name

    devices = ["cpu"] + [name for name, there in (("cuda", accel.cuda_available), ("mps", accel.mps_available))
                         if there is True]
    return {device: soft(lambda device=device: pick(device)) for device in devices}


def java() -> Java:
    from capcli.evaluation.java_metrics import coco_installed, find_java, java_version

    path = _soft(find_java)
    version = _soft(lambda: java_version(path)) if path not in (None, UNKNOWN) else None
    return Java(path, version, os.environ.get("JAVA_HOME"), _soft(coco_installed))


def nearest_existing(folder: str) -> str:
    """``folder``, or its nearest parent that exists (where a folder not made yet will be)."""
    path = os.path.abspath(folder)
    while not os.path.exists(path) and os.path.dirname(path) != path:
        path = os.path.dirname(path)
    return path


def space(folder: str, parent_if_missing: bool = True) -> Space:
    """Room in ``folder`` (or, with ``parent_if_missing``, in its nearest existing parent)."""
    exists = os.path.isdir(folder)
    if not exists and not parent_if_missing:
        return Space(folder, None, False, None, None)
    measured = _soft(lambda: nearest_existing(folder))
    usage = _soft(lambda: shutil.disk_usage(measured))
    total, free = (UNKNOWN, UNKNOWN) if usage == UNKNOWN else (usage.total, usage.free)
    return Space(folder, measured, exists, total, free)


def weights(soft: Probe) -> Weights:
    """Torch's hub cache and, per torchvision encoder capcli knows, whether its ImageNet weights are in it
    (CLIP's weights live in open_clip's own cache)."""
    def encoders() -> list[str]:
        from capcli.config import ENCODER_NAMES
        from capcli.model.encoder import SMALL

        return [name for name in ENCODER_NAMES if name != SMALL]

    def cached(name: str) -> CachedWeights:
        from capcli.model.pretrained import hub_weights_path

        path = hub_weights_path(name)
        there = os.path.isfile(path)
        return CachedWeights(path, there, os.path.getsize(path) if there else None)

    hub = soft(lambda: _torch().hub.get_dir())
    names = soft(encoders)
    files = {} if names == UNKNOWN else {name: soft(lambda name=name: cached(name)) for name in names}
    return Weights(hub, UNKNOWN if hub == UNKNOWN else os.path.join(hub, "checkpoints"), files)


def _notes(torch: TorchInfo, java_found: Java, shm: Space) -> tuple[str, ...]:
    from capcli.evaluation.java_metrics import GET_COCO, GET_JAVA

    notes = []
    if torch.import_error:
        notes.append(f"torch does not import ({torch.import_error}); reinstall torch and torchvision "
                     "(docs/gpu-box.md: \"Install torch for the box's CUDA driver\")")
    elif torch.tested is False:
        notes.append(f"torch {torch.version} is outside the range capcli is tested on ({torch.tested_range})")
    if torch.torchvision_problem not in (None, UNKNOWN):
        notes.append(torch.torchvision_problem)
    if java_found.pycocoevalcap is False:
        notes.append(f"METEOR and SPICE do not run: pycocoevalcap is not installed ({GET_COCO})")
    elif java_found.path is None:
        notes.append(f"METEOR and SPICE do not run: no java on PATH or in JAVA_HOME ({GET_JAVA})")
    if isinstance(shm.free_bytes, int) and shm.free_bytes < SHM_LOW_BYTES:
        notes.append(f"{shm.folder} has under 1 GiB free: DataLoader workers (--workers) and prep's workers "
                     "share memory through it; use fewer workers or a larger one (docker run --shm-size=2g)")
    return tuple(notes)


def gather(data_folder: str, output_folder: str) -> Environment:
    """Everything ``capcli env`` shows, read from this machine and process."""
    from capcli.runtime.parallel import SHM_FOLDER  # where prep's workers share memory

    import_error = _torch_import_error()
    soft = _soft if import_error is None else _skipped
    torch = torch_info(import_error, soft)
    accel = accelerators(soft)
    java_found = java()
    shm = space(SHM_FOLDER, parent_if_missing=False)
    return Environment(FORMAT, software(), torch, accel, cpu(soft), precision_auto(accel, soft), java_found, shm,
                       space(data_folder), space(output_folder), weights(soft), _notes(torch, java_found, shm))
