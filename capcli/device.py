"""Choosing the device and the autocast precision."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from capcli.config import PRECISIONS
from capcli.errors import CapcliError


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise CapcliError("--device cuda: no CUDA device is available here (use --device cpu)")
    return torch.device(name)


def _cpu_probe(name: str) -> bool:
    """One of torch.cpu's instruction-set probes (private API: False where this torch lacks it)."""
    probe = getattr(torch.cpu, name, None)
    return bool(probe()) if callable(probe) else False


def cpu_has_amx() -> bool:
    return _cpu_probe("_is_amx_tile_supported")


def cpu_supports_bf16() -> bool:
    """Native bf16 matrix instructions (AVX512-BF16 or AMX); without them bf16 is emulated and slow."""
    return _cpu_probe("_is_avx512_bf16_supported") or cpu_has_amx()


@dataclass(frozen=True)
class Precision:
    name: str  # fp32, bf16 or fp16
    device_type: str

    @property
    def dtype(self) -> torch.dtype | None:
        return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.name)

    @property
    def needs_scaler(self) -> bool:
        return self.name == "fp16"

    def autocast(self):
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)


def resolve_precision(name: str, device: torch.device) -> Precision:
    """``auto``: fp16 (bf16 where supported) on CUDA, bf16 on CPUs with native bf16, else fp32."""
    if name == "auto":
        if device.type == "cuda":
            name = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        else:
            name = "bf16" if cpu_supports_bf16() else "fp32"
    if name == "fp16" and device.type != "cuda":
        raise CapcliError("--precision fp16 needs a CUDA device (use bf16 or fp32 on the CPU)")
    if name not in PRECISIONS:
        raise CapcliError(f"unknown precision {name!r}")
    return Precision(name, device.type)
