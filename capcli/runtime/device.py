"""Choosing the device and the autocast precision."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from capcli.config import PRECISIONS
from capcli.errors import CapcliError
from capcli.runtime.torch_compat import cpu_supports_bf16


def mps_available() -> bool:
    """Apple's Metal GPU (torch's ``mps`` device), where this torch build and machine have it."""
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def resolve_device(name: str) -> torch.device:
    """``auto``: the first CUDA GPU, else Apple's GPU (mps), else the CPU."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps" if mps_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise CapcliError("--device cuda: this torch sees no CUDA device (use --device cpu; "
                          "`capcli env` shows the torch build and what it sees)")
    if name.startswith("mps") and not mps_available():
        raise CapcliError("--device mps: this torch sees no Apple GPU (use --device cpu; "
                          "`capcli env` shows the torch build and what it sees)")
    return torch.device(name)


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
    """``auto``: fp16 (bf16 where supported) on CUDA, bf16 on CPUs with native bf16 that torch may use
    (``ATEN_CPU_CAPABILITY=avx2`` forbids it), else fp32 (the CPU without it, and mps)."""
    if name == "auto":
        if device.type == "cuda":
            name = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        elif device.type == "cpu":
            name = "bf16" if cpu_supports_bf16() else "fp32"
        else:  # mps: the CPU's bf16 says nothing about Apple's GPU
            name = "fp32"
    if name == "fp16" and device.type != "cuda":
        raise CapcliError(f"--precision fp16 needs a CUDA device (use bf16 or fp32 on {device.type}; "
                          "`capcli env` shows what auto picks here)")
    if name not in PRECISIONS:
        raise CapcliError(f"unknown precision {name!r}")
    return Precision(name, device.type)
