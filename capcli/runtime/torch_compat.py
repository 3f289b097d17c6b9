"""What capcli needs from the installed torch and torchvision that is not public, stable API.

Every private torch name capcli touches is reached here only, each through a probe with a plain
fallback, so a torch that renamed or dropped it costs a fast path, never a crash: the installed
release and whether it is in capcli's tested range, the CPU's instruction sets as torch sees them
(``ATEN_CPU_CAPABILITY`` and ``ONEDNN_MAX_CPU_ISA`` respected, so a slower CPU can be emulated on a
faster one), oneDNN's fused convolution, tensor version counters, the globals torch's
``weights_only`` unpickler allows, and importing a torchvision whose compiled operators do not
load beside this torch.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from collections.abc import Callable
from importlib import metadata

import torch

from capcli.errors import CapcliError

TORCH_FLOOR = (2, 6)  # the oldest release capcli was tested on (docs/gpu-box.md: Requirements)
TORCH_NEWEST_TESTED = (2, 14)
TORCHVISION_OFFSET = 15  # torchvision 0.(n + 15) is built for torch 2.n (0.29 for 2.14, 0.24 for 2.9)
# oneDNN ISA limits (ONEDNN_MAX_CPU_ISA) under which it has no native bf16 instructions
_ONEDNN_WITHOUT_BF16 = ("SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE", "AVX512_CORE_VNNI")
log = logging.getLogger(__name__)


def torch_version() -> str:
    return str(torch.version.__version__)


def release(version: str) -> tuple[int, int]:
    """(major, minor) of a version string: ``2.10.0a0+nv25.01`` → (2, 10); (0, 0) if unreadable."""
    found = re.match(r"(\d+)\.(\d+)", version)
    return (int(found.group(1)), int(found.group(2))) if found else (0, 0)


def torch_release() -> tuple[int, int]:
    return release(torch_version())


def torch_tested() -> bool:
    """Whether the installed torch is inside the range capcli's suite runs on."""
    return TORCH_FLOOR <= torch_release() <= TORCH_NEWEST_TESTED


def torchvision_version() -> str | None:
    """torchvision's version from its package metadata (no import), None when not installed."""
    try:
        return metadata.version("torchvision")
    except metadata.PackageNotFoundError:
        return None


def torchvision_mismatch() -> str | None:
    """Why the installed torchvision is not the one built for this torch, or None when it is
    (or when no rule for this torch's major release is known)."""
    version = torchvision_version()
    if version is None:
        return "torchvision is not installed (pip install the torchvision built for your torch)"
    major, minor = torch_release()
    if major != 2:
        return None
    wanted = minor + TORCHVISION_OFFSET
    if release(version) != (0, wanted):
        return (f"torch {torch_version()} and torchvision {version} do not match: torch 2.{minor} needs "
                f"torchvision 0.{wanted} (pip install 'torchvision==0.{wanted}.*' next to this torch; "
                "`capcli env` shows what is installed)")
    return None


def import_torchvision():
    """torchvision, refused in one line when it was built for another torch release.

    A torchvision built for the same release but another build of it (PyPI's CUDA torchvision
    beside a CPU-only torch) cannot load its compiled operators, and its import then fails on
    registering a stand-in for one of them (``torchvision::nms``). capcli calls none of them
    (models and weights only), so each missing operator is declared and the import tried again.
    """
    mismatch = torchvision_mismatch()
    if mismatch:
        raise CapcliError(mismatch)
    if "torchvision" in sys.modules:
        return sys.modules["torchvision"]
    for _ in range(_MAX_DECLARED):
        try:
            # on the CPU: its import runs tensor code (torch._dynamo's, on older torches), which fails
            # inside a caller's torch.device("meta") block
            with torch.device("cpu"):
                import torchvision
        except RuntimeError as exc:
            missing = re.search(r"operator torchvision::(\w+) does not exist", str(exc))
            if missing is None:
                raise
            _forget("torchvision")
            _declare_torchvision_operator(missing.group(1))
            continue
        if _TORCHVISION_LIBRARY:
            log.debug("torchvision's compiled operators did not load beside torch %s: declared %s",
                      torch_version(), ", ".join(_DECLARED))
        return torchvision
    raise CapcliError(f"torchvision {torchvision_version()} does not import beside torch {torch_version()}: "
                      "install the torchvision built for this torch (`capcli env` shows both)")


_MAX_DECLARED = 16
_TORCHVISION_LIBRARY = []  # keeps the declarations alive: a dropped torch.library.Library undoes them
_DECLARED = []


def _forget(package: str) -> None:
    for name in [n for n in sys.modules if n == package or n.startswith(package + ".")]:
        del sys.modules[name]


def _declare_torchvision_operator(name: str) -> None:
    """Declare ``torchvision::name`` (the schema is a stand-in: it is never called)."""
    if not _TORCHVISION_LIBRARY:
        _TORCHVISION_LIBRARY.append(torch.library.Library("torchvision", "FRAGMENT"))
    _TORCHVISION_LIBRARY[0].define(f"{name}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _DECLARED.append(name)


# The CPU ---------------------------------------------------------------------------------------

def cpu_capability() -> str:
    """The vector instruction set torch's CPU kernels use (``AVX512``, ``AVX2``, ``DEFAULT``, ``SVE256``…),
    lowered by ``ATEN_CPU_CAPABILITY``."""
    probe = getattr(getattr(torch.backends, "cpu", None), "get_cpu_capability", None)
    return str(probe()) if callable(probe) else "unknown"


def cpu_features() -> dict:
    """The CPU's instruction sets as torch reads them (``torch.cpu.get_capabilities``, public from
    torch 2.11; torch.cpu's private probes before), {} where neither exists."""
    public = getattr(torch.cpu, "get_capabilities", None)
    if callable(public):
        try:
            return dict(public())
        except RuntimeError:
            pass
    private = {"avx512_bf16": "_is_avx512_bf16_supported", "amx_tile": "_is_amx_tile_supported",
               "avx2": "_is_avx2_supported", "avx512_f": "_is_avx512_supported"}
    return {key: bool(getattr(torch.cpu, name)()) for key, name in private.items()
            if callable(getattr(torch.cpu, name, None))}


def _avx512_allowed() -> bool:
    """Whether torch's and oneDNN's overrides leave the AVX-512 instructions on (an x86 CPU)."""
    isa = os.environ.get("ONEDNN_MAX_CPU_ISA", "").strip().upper()
    return cpu_capability().startswith("AVX512") and isa not in _ONEDNN_WITHOUT_BF16


def _has_amx(features: dict) -> bool:
    return bool(features.get("amx_tile") or features.get("amx_bf16"))


def cpu_has_amx() -> bool:
    return _avx512_allowed() and _has_amx(cpu_features())


def cpu_supports_bf16() -> bool:
    """Native bf16 matrix instructions (AVX512-BF16 or AMX) that torch is allowed to use; without
    them bf16 is emulated and slower than fp32."""
    features = cpu_features()  # read once
    return _avx512_allowed() and (bool(features.get("avx512_bf16")) or _has_amx(features))


# Private operators and attributes --------------------------------------------------------------

def fused_convolution() -> Callable | None:
    """oneDNN's convolution with a fused activation (``torch.ops.mkldnn._convolution_pointwise``;
    its ``.binary`` form adds a shortcut first), None where this torch has no such operator."""
    if not torch.backends.mkldnn.is_available():
        return None
    try:
        op = torch.ops.mkldnn._convolution_pointwise
    except (AttributeError, RuntimeError):
        return None
    return op if hasattr(op, "binary") else None


def tensor_version(tensor: torch.Tensor) -> object:
    """A counter that every in-place change of ``tensor`` raises (``Tensor._version``); where a
    tensor has none, a new object each call, so that every cache keyed on it misses."""
    version = getattr(tensor, "_version", None)
    return object() if version is None else version


def weights_only_allowed(name: str) -> bool | None:
    """Whether torch's ``weights_only`` unpickler allows the global ``name`` by default; None where
    this torch does not say."""
    try:
        from torch._weights_only_unpickler import _get_allowed_globals
    except ImportError:
        return None
    try:
        return name in _get_allowed_globals()
    except (TypeError, RuntimeError):
        return None
