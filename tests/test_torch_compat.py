"""capcli.runtime.torch_compat and capcli.runtime.device on other torches and CPUs than this one: the version
range, a torchvision built for another torch, a torchvision whose compiled operators do not load,
the CPU's instruction sets under torch's overrides, and Apple's GPU (faked: none here)."""

from __future__ import annotations

import configparser
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from packaging.requirements import Requirement

from capcli.errors import CapcliError
from capcli.runtime import device as device_module
from capcli.runtime import torch_compat
from capcli.runtime.device import resolve_device, resolve_precision

ROOT = Path(__file__).resolve().parent.parent


def _requirements() -> dict[str, Requirement]:
    parser = configparser.ConfigParser()
    parser.read(ROOT / "setup.cfg")
    lines = [line.strip() for line in parser["options"]["install_requires"].splitlines() if line.strip()]
    return {Requirement(line).name: Requirement(line) for line in lines}


@pytest.mark.parametrize("version, expected", [("2.14.1+cu130", (2, 14)), ("2.10.0a0+nv25.01", (2, 10)),
                                               ("2.13.0+cpu", (2, 13)), ("0.28.0+cu130", (0, 28)),
                                               ("3.0.0.dev20270101", (3, 0)), ("nightly", (0, 0))])
def test_release_reads_vendor_local_and_pre_release_versions(version, expected):
    assert torch_compat.release(version) == expected


@pytest.mark.parametrize("version, admitted", [("2.6.0a0+ecf3bae40a.nv24.12", True), ("2.10.0a0+nv25.01", True),
                                               ("2.13.0+cpu", True), ("2.14.1+cu130", True), ("2.15.0", True),
                                               ("2.99.0", True), ("2.5.1", False), ("3.0.0", False)])
def test_the_torch_range_admits_the_floor_minors_vendor_builds_and_releases_up_to_3(version, admitted):
    requirements = _requirements()
    assert requirements["torch"].specifier.contains(version, prereleases=True) is admitted
    floor = torch_compat.TORCH_FLOOR
    torchvision = f"0.{floor[1] + torch_compat.TORCHVISION_OFFSET}.0a0"
    assert requirements["torchvision"].specifier.contains(torchvision, prereleases=True)
    assert requirements["torch"].specifier.contains(f"{floor[0]}.{floor[1]}.0a0", prereleases=True)


def test_the_package_metadata_pins_no_torch_release():
    """constraints.txt pins the pair `make` installs; the package itself only sets a range."""
    for name in ("torch", "torchvision"):
        assert not any(spec.operator in ("==", "===", "~=") for spec in _requirements()[name].specifier)
    assert "torch==" in (ROOT / "constraints.txt").read_text()


def test_torchvision_built_for_another_torch_is_one_line(run, monkeypatch):
    monkeypatch.setattr(torch_compat, "torch_version", lambda: "2.15.0")
    monkeypatch.setattr(torch_compat, "torchvision_version", lambda: "0.29.1")
    with pytest.raises(CapcliError, match=r"torch 2\.15\.0 and torchvision 0\.29\.1 do not match: torch 2\.15 "
                                          r"needs torchvision 0\.30"):
        torch_compat.import_torchvision()
    result = run("arch", "--encoder", "resnet18", "--vocab-size", 50)
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    assert result.output.strip().count("\n") == 0 and "do not match" in result.output
    monkeypatch.setattr(torch_compat, "torchvision_version", lambda: "0.30.0a0+nv")
    assert torch_compat.torchvision_mismatch() is None
    monkeypatch.setattr(torch_compat, "torchvision_version", lambda: None)
    assert "not installed" in torch_compat.torchvision_mismatch()


_NO_OPERATORS = """
import logging, sys
import torch
def fail(path):
    raise OSError("simulated: libtorch_cuda.so: cannot open shared object file")
torch.ops.load_library = fail  # what a CUDA torchvision meets beside a CPU-only torch
logging.basicConfig(level=logging.DEBUG, stream=sys.stdout, format="%(message)s")
from capcli.runtime.torch_compat import import_torchvision
torchvision = import_torchvision()
print(torchvision.extension._has_ops(), torchvision.models.resnet18().eval()(torch.zeros(1, 3, 32, 32)).shape)
"""


def test_a_torchvision_whose_compiled_operators_do_not_load_still_gives_its_models():
    done = subprocess.run([sys.executable, "-c", _NO_OPERATORS], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[-1] == "False torch.Size([1, 1000])"
    assert any("compiled operators did not load" in line and "nms" in line for line in lines), lines


def test_native_bf16_is_used_only_where_torch_and_onednn_may_use_it(monkeypatch):
    monkeypatch.setattr(torch_compat, "cpu_features", lambda: {"avx512_bf16": True, "amx_tile": False})
    monkeypatch.setattr(torch_compat, "cpu_capability", lambda: "AVX512")
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    monkeypatch.setattr(device_module, "cpu_supports_bf16", torch_compat.cpu_supports_bf16)
    assert torch_compat.cpu_supports_bf16() and not torch_compat.cpu_has_amx()
    assert resolve_precision("auto", torch.device("cpu")).name == "bf16"
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "avx2")
    assert not torch_compat.cpu_supports_bf16()
    assert resolve_precision("auto", torch.device("cpu")).name == "fp32"
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_AMX")
    assert torch_compat.cpu_supports_bf16()
    monkeypatch.setattr(torch_compat, "cpu_capability", lambda: "AVX2")  # ATEN_CPU_CAPABILITY=avx2
    assert not torch_compat.cpu_supports_bf16()
    assert resolve_precision("auto", torch.device("cpu")).name == "fp32"


def test_aten_cpu_capability_lowers_what_capcli_reads():
    code = ("from capcli.runtime.torch_compat import cpu_capability, cpu_supports_bf16, cpu_has_amx; "
            "print(cpu_capability(), cpu_supports_bf16(), cpu_has_amx())")
    env = {**os.environ, "ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["AVX2", "False", "False"]


def test_tensor_version_follows_in_place_changes():
    t = torch.zeros(3)
    before = torch_compat.tensor_version(t)
    t.add_(1)
    assert torch_compat.tensor_version(t) != before


def test_the_fused_convolution_probe_finds_the_operator_on_this_torch():
    op = torch_compat.fused_convolution()
    assert op is None or callable(op.binary)
    assert op is not None or not torch.backends.mkldnn.is_available()


def test_auto_picks_apples_gpu_where_torch_reports_it(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("mps")
    assert resolve_device("mps") == torch.device("mps")
    assert resolve_precision("auto", torch.device("mps")).name == "fp32"
    with pytest.raises(CapcliError, match="fp16 needs a CUDA device"):
        resolve_precision("fp16", torch.device("mps"))
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(CapcliError, match=r"--device mps: this torch sees no Apple GPU .*capcli env"):
        resolve_device("mps")


def test_on_macos_an_operator_apples_gpu_lacks_falls_back_to_the_cpu():
    code = ("import os, sys; sys.platform = 'darwin'; sys.argv = ['capcli', '--version']\n"
            "os.environ.pop('PYTORCH_ENABLE_MPS_FALLBACK', None)\n"
            "from capcli.cli import commands as cli\n"
            "try:\n    cli.main()\nexcept SystemExit:\n    pass\n"
            "print(os.environ.get('PYTORCH_ENABLE_MPS_FALLBACK'), 'torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.stdout.splitlines()[-1] == "1 False", done.stdout + done.stderr


def test_torchvision_first_imported_on_the_meta_device_imports():
    """Checkpoints are built on the meta device first; on torch 2.6 torchvision's import (through
    torch._dynamo's) fails there unless it runs on the CPU."""
    code = ("import torch\nfrom capcli.runtime.torch_compat import import_torchvision\n"
            "with torch.device('meta'):\n    print(import_torchvision().models.resnet18().fc.weight.device)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["meta"]
