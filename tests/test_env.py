"""``capcli env``: every figure it prints is this machine's (cores as ``nproc`` counts them, free
disk as ``df`` reads it, the first line of ``java -version``, the CPU as torch sees it under
ATEN_CPU_CAPABILITY, the CPU kernels' switch, weights in the hub cache), in plain text on a real
terminal (colours) and redirected to a file (none), and as JSON; a torch that does not import is
reported, not raised.
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import subprocess
import sys

import pytest
import torch

from capcli import __version__
from capcli.cli.env import size
from capcli.runtime.torch_compat import TORCH_FLOOR, TORCH_NEWEST_TESTED, torch_tested
from tests.test_env_failures import mount_tmpfs  # noqa: F401 (a fixture: a real small tmpfs)
from tests.test_terminal import COLUMNS, run_in_terminal

SECTIONS = {
    "software": {"capcli", "python", "executable", "platform", "os"},
    "torch": {"version", "import_error", "torchvision", "torchvision_problem", "tested", "tested_range"},
    "accelerators": {"cuda_build", "cuda_available", "gpus", "cudnn", "cuda_visible_devices", "mps_available"},
    "cpu": {"model", "logical_cores", "usable_cores", "torch_threads", "capability", "native_bf16", "amx",
            "variables", "fast_paths"},
    "java": {"path", "version", "java_home", "pycocoevalcap"},
    "shm": {"folder", "measured", "exists", "total_bytes", "free_bytes"},
    "data_folder": {"folder", "measured", "exists", "total_bytes", "free_bytes"},
    "output_folder": {"folder", "measured", "exists", "total_bytes", "free_bytes"},
    "weights": {"hub_dir", "checkpoints", "files"},
}
ANSI = re.compile(r"\x1b\[[0-9;]*m")
CPU_SETTINGS = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "CAPCLI_CPU_KERNELS")


def env_json(run, *args) -> dict:
    result = run("env", "--json", *args)
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def value(text: str, key: str) -> str:
    """The value of the plain report's ``key:`` line (colours and padding dropped)."""
    found = re.findall(rf"^  {re.escape(key)}:\s+(.*?)\s*$", ANSI.sub("", text), flags=re.MULTILINE)
    assert len(found) == 1, f"{key!r} lines: {found}\n{text}"
    return found[0]


def capcli_env(*args, cwd, stdout, **variables) -> subprocess.CompletedProcess:
    """``capcli env ARGS`` as a real process, its stdout redirected to ``stdout`` (a file or PIPE)."""
    env = {k: v for k, v in os.environ.items() if k not in CPU_SETTINGS}
    env.update(variables)
    return subprocess.run([sys.executable, "-m", "capcli.cli", "env", *map(str, args)], cwd=cwd, env=env,
                          stdout=stdout, stderr=subprocess.PIPE, text=True, timeout=180, check=False)


def df(folder, field: str) -> int:
    done = subprocess.run(["df", "-B1", f"--output={field}", str(folder)], capture_output=True, text=True, check=True)
    return int(done.stdout.split()[-1])


def test_json_has_every_section(run, tmp_path):
    report = env_json(run, "--data-folder", tmp_path, "--output-folder", tmp_path)
    assert set(report) == {"format", "precision_auto", "notes", *SECTIONS}
    for section, keys in SECTIONS.items():
        assert set(report[section]) == keys, section
    assert report["format"] == 1 and report["software"]["capcli"] == __version__
    assert report["software"]["python"].endswith(platform.python_version())
    assert report["torch"]["version"] == torch.__version__ and report["torch"]["import_error"] is None
    assert report["accelerators"]["cuda_build"] == torch.version.cuda
    assert report["accelerators"]["cuda_available"] is torch.cuda.is_available()
    assert report["cpu"]["torch_threads"] == torch.get_num_threads()
    assert report["precision_auto"]["cpu"] in ("fp32", "bf16")
    assert ("cuda" in report["precision_auto"]) is torch.cuda.is_available()


def test_cores_are_what_nproc_counts(run):
    env = {k: v for k, v in os.environ.items() if not k.startswith("OMP_")}  # nproc obeys OMP_NUM_THREADS
    nproc = int(subprocess.run(["nproc"], capture_output=True, text=True, env=env, check=True).stdout)
    every = int(subprocess.run(["nproc", "--all"], capture_output=True, text=True, env=env, check=True).stdout)
    cpu = env_json(run)["cpu"]
    assert cpu["logical_cores"] == os.cpu_count() == every
    assert cpu["usable_cores"] == nproc
    if nproc == every:  # no affinity mask: the three counts agree (as on the development machine)
        assert cpu["logical_cores"] == nproc
    result = run("env")
    assert value(result.output, "cores").startswith(f"{os.cpu_count()} logical")


def test_free_disk_agrees_with_df(run, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    place = env_json(run, "--data-folder", data)["data_folder"]
    avail, total = df(data, "avail"), df(data, "size")
    assert place["exists"] is True and place["measured"] == str(data)
    assert abs(place["free_bytes"] - avail) <= max(0.01 * avail, 4 << 20), (place, avail)
    assert place["total_bytes"] == total


def test_a_folder_not_made_yet_is_measured_at_its_parent(run, tmp_path):
    out = tmp_path / "runs" / "not-yet"
    place = env_json(run, "--output-folder", out)["output_folder"]
    assert place["exists"] is False and place["measured"] == str(tmp_path) and place["folder"] == str(out)
    assert abs(place["free_bytes"] - df(tmp_path, "avail")) <= max(0.01 * place["free_bytes"], 4 << 20)
    text = run("env", "--output-folder", out).output
    assert value(text, "output folder") == f"{out} (not made yet)"
    assert not (tmp_path / "runs").exists()  # env writes nothing


def test_a_small_dev_shm_gets_a_note(run, monkeypatch, mount_tmpfs):  # noqa: F811
    shm = mount_tmpfs("64m")  # what Docker gives a container without --shm-size
    monkeypatch.setattr("capcli.runtime.parallel.SHM_FOLDER", str(shm))
    report = env_json(run)
    assert report["shm"]["total_bytes"] == 64 << 20 and report["shm"]["free_bytes"] == df(shm, "avail")
    assert [note for note in report["notes"] if note.startswith(f"{shm} has under 1 GiB free")]
    assert value(run("env").output, str(shm)) == "64.0 MiB free of 64.0 MiB (under 1 GiB: see notes)"


def test_no_dev_shm_reads_absent(run, monkeypatch, tmp_path):
    monkeypatch.setattr("capcli.runtime.parallel.SHM_FOLDER", str(tmp_path / "shm"))
    report = env_json(run)
    assert report["shm"] == {"folder": str(tmp_path / "shm"), "measured": None, "exists": False,
                             "total_bytes": None, "free_bytes": None}
    assert value(run("env").output, str(tmp_path / "shm")) == "absent"
    assert not [note for note in report["notes"] if "shm" in note]


def test_java_version_is_the_first_line_java_prints(run):
    java = shutil.which("java")
    if java is None:
        pytest.skip("no java on PATH")
    done = subprocess.run([java, "-version"], capture_output=True, text=True, check=True)
    first = (done.stderr or done.stdout).strip().splitlines()[0].strip()
    report = env_json(run)["java"]
    assert report["path"] == java and report["version"] == first
    assert value(run("env").output, "version") == first


def test_no_java_is_said(run, monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("JAVA_HOME", raising=False)
    report = env_json(run)
    assert report["java"]["path"] is None and report["java"]["version"] is None
    if report["java"]["pycocoevalcap"] is True:
        assert any("no java on PATH" in note for note in report["notes"])
    assert value(run("env").output, "java") == "not found"


def test_cpu_kernels_switched_off(run, monkeypatch):
    monkeypatch.delenv("CAPCLI_CPU_KERNELS", raising=False)
    assert not any("CAPCLI_CPU_KERNELS" in state for state in env_json(run)["cpu"]["fast_paths"].values())
    monkeypatch.setenv("CAPCLI_CPU_KERNELS", "0")
    cpu = env_json(run)["cpu"]
    assert cpu["fast_paths"] == {"encoder": "off (CAPCLI_CPU_KERNELS=0)", "decoder": "off (CAPCLI_CPU_KERNELS=0)"}
    assert cpu["variables"]["CAPCLI_CPU_KERNELS"] == "0"
    text = run("env").output
    assert value(text, "encoder kernels") == value(text, "decoder kernels") == "off (CAPCLI_CPU_KERNELS=0)"


def test_cached_weights_are_found_in_torch_home(run, monkeypatch, tmp_path):
    from capcli.model.pretrained import hub_weights_path

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    path = hub_weights_path("resnet18")
    assert path.startswith(str(tmp_path))
    os.makedirs(os.path.dirname(path))
    with open(path, "wb") as f:
        f.write(b"\0" * 3000)
    weights = env_json(run)["weights"]
    assert weights["checkpoints"] == str(tmp_path / "hub" / "checkpoints")
    assert weights["files"]["resnet18"] == {"path": path, "cached": True, "bytes": 3000}
    assert weights["files"]["resnet34"]["cached"] is False and weights["files"]["resnet34"]["bytes"] is None
    assert "resnet-small" not in weights["files"]
    text = run("env").output
    assert value(text, "cached") == "resnet18 (2.9 KiB)"
    assert weights["files"]["convnext_tiny"]["cached"] is False and "vit_b_16" in weights["files"]
    assert value(text, "not cached") == f"{len(weights['files']) - 1} others (capcli train --help lists them)"


def test_plain_text_in_a_terminal_is_coloured_and_fits_80_columns(tmp_path):
    (tmp_path / "data").mkdir()
    rc, output = run_in_terminal("env", "--data-folder", "data", "--output-folder", "out", cwd=tmp_path)
    assert rc == 0 and "Traceback" not in output, output
    assert "\x1b[" in output  # section titles in bold
    lines = ANSI.sub("", output).replace("\r\n", "\n").splitlines()
    assert lines[0] == f"capcli {__version__}"
    for title in ("gpu", "cpu", "--precision auto picks", "java (METEOR, SPICE)", "disk", "pretrained weights"):
        assert title in lines
    assert all(len(line) <= COLUMNS for line in lines if "/" not in line), lines  # paths may be longer
    text = "\n".join(lines)
    assert value(text, "data folder") == "data" and value(text, "output folder") == "out (not made yet)"
    tested_range = f"{'.'.join(map(str, TORCH_FLOOR))} to {'.'.join(map(str, TORCH_NEWEST_TESTED))}"
    said = f"tested: {tested_range}" if torch_tested() else f"untested: capcli is tested on {tested_range}"
    assert value(text, "torch") == f"{torch.__version__} ({said})"


def test_plain_text_redirected_to_a_file_has_no_colours(tmp_path):
    if platform.machine().lower() not in ("x86_64", "amd64"):
        pytest.skip("ATEN_CPU_CAPABILITY=avx2 is an x86 setting")
    with open(tmp_path / "env.txt", "w") as out:
        done = capcli_env(cwd=tmp_path, stdout=out, ATEN_CPU_CAPABILITY="avx2", CAPCLI_CPU_KERNELS="0")
    text = (tmp_path / "env.txt").read_text()
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    assert "\x1b[" not in text
    assert value(text, "capability") == "AVX2" and value(text, "native bf16") == "no" and value(text, "amx") == "no"
    assert value(text, "ATEN_CPU_CAPABILITY") == "avx2"
    assert value(text, "encoder kernels") == "off (CAPCLI_CPU_KERNELS=0)"
    assert value(text, "cpu") == "fp32"  # --precision auto without native bf16


def test_json_through_a_pipe_under_aten_cpu_capability(tmp_path):
    if platform.machine().lower() not in ("x86_64", "amd64"):
        pytest.skip("ATEN_CPU_CAPABILITY=avx2 is an x86 setting")
    done = capcli_env("--json", cwd=tmp_path, stdout=subprocess.PIPE, ATEN_CPU_CAPABILITY="avx2")
    assert done.returncode == 0, done.stderr
    cpu = json.loads(done.stdout)["cpu"]
    assert cpu["capability"] == "AVX2" and cpu["native_bf16"] is False and cpu["amx"] is False
    assert cpu["variables"] == {"ATEN_CPU_CAPABILITY": "avx2"}


def test_a_torch_that_does_not_import_is_reported(tmp_path):
    fake = tmp_path / "site" / "torch"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise OSError('libtorch_cuda.so: cannot open shared object file')\n")
    done = capcli_env("--json", cwd=tmp_path, stdout=subprocess.PIPE, PYTHONPATH=str(tmp_path / "site"))
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    report = json.loads(done.stdout)
    assert report["torch"]["import_error"] == "OSError: libtorch_cuda.so: cannot open shared object file"
    assert report["cpu"]["capability"] == "unknown" and report["precision_auto"] == {"cpu": "unknown"}
    assert report["cpu"]["logical_cores"] == os.cpu_count()  # what needs no torch is still read
    assert report["notes"][0].startswith("torch does not import (OSError: libtorch_cuda.so")


def test_sizes_in_binary_units():
    assert [size(n) for n in (512, 3000, 5 << 20, 3 << 30, None, "unknown")] == [
        "512 B", "2.9 KiB", "5.0 MiB", "3.0 GiB", "–", "unknown"]
