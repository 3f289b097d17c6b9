"""Failures of the machine, not of capcli: a full disk, a read-only folder, permission denied, a
torn HDF5 file, a missing split, a FIFO given as an image. Each is one line and exit code 1, and
what was there before is left intact.

Full and read-only disks are real small tmpfs mounts where this machine allows mounting (as CI
here does); the monkeypatched ``OSError`` tests run everywhere.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys

import pytest
import torch

from capcli.store.checkpoint import load_checkpoint
from tests.conftest import TINY_TRAIN, karpathy_entry, write_image, write_karpathy

PREP = ("prep", "--image-size", 32, "--min-word-freq", 1, "--workers", 2)


def capcli(*args, timeout=300) -> subprocess.CompletedProcess:
    """A real process: a crash of the interpreter (SIGSEGV) must show as such, not kill pytest."""
    return subprocess.run([sys.executable, "-m", "capcli.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def one_error_line(output: str) -> str:
    lines = [line for line in output.strip().splitlines() if line.startswith("Error:")]
    assert len(lines) == 1 and "Traceback" not in output, output
    return lines[0]


@pytest.fixture
def mount_tmpfs(tmp_path):
    """mount_tmpfs(size) → a fresh tmpfs folder of that size (skips where mounting is not allowed)."""
    mounted = []

    def mount(size: str, name: str = "disk"):
        folder = tmp_path / name
        folder.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                              capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
        mounted.append(folder)
        return folder

    yield mount
    for folder in mounted:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True)


def _snapshot(folder) -> dict[str, bytes]:
    return {name: (folder / name).read_bytes() for name in os.listdir(folder) if (folder / name).is_file()}


def test_prep_on_a_full_disk_is_one_line_and_keeps_the_old_set(mount_tmpfs):
    disk = mount_tmpfs("3m")
    first = capcli(*PREP, "--num-images", 20, "--output-folder", disk)
    assert first.returncode == 0, first.stderr
    before = _snapshot(disk)
    done = capcli(*PREP, "--num-images", 400, "--output-folder", disk, "--force")
    assert done.returncode == 1, (done.returncode, done.stderr[-2000:])  # not -11: the interpreter survives
    line = one_error_line(done.stderr)
    assert "no space left" in line
    assert _snapshot(disk) == before  # the prepared set that was there still is
    assert not [n for n in os.listdir(disk) if n.startswith(".")]  # no staging folder or temp file left


def test_checkpoint_on_a_full_disk_keeps_the_last_good_one(data, mount_tmpfs):
    disk = mount_tmpfs("80m")  # one resnet18 checkpoint (~45 MB) fits, a second copy does not
    done = capcli("train", "--data-folder", data, "--output-folder", disk, *TINY_TRAIN, "--epochs", 2)
    assert done.returncode == 1, done.stderr[-2000:]
    assert "no space left" in one_error_line(done.stderr)
    names = os.listdir(disk)
    assert not [n for n in names if n.endswith(".tmp")]
    assert load_checkpoint(str(disk / "checkpoint_shapes_5_1.pth.tar"))["epoch"] == 1


def test_read_only_output_folder(data, mount_tmpfs, tmp_path):
    disk = mount_tmpfs("4m")
    subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
    done = capcli("train", "--data-folder", data, "--output-folder", disk / "run", *TINY_TRAIN, "--epochs", 1)
    assert done.returncode == 1
    assert "read-only file system" in one_error_line(done.stderr)


def test_disk_full_while_saving_is_one_line_everywhere(data, tmp_path, run, monkeypatch):
    out = tmp_path / "out"
    assert run("train", "--data-folder", data, "--output-folder", out, *TINY_TRAIN, "--epochs", 1).exit_code == 0
    before = (out / "checkpoint_shapes_5_1.pth.tar").read_bytes()

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(torch, "save", full)
    result = run("train", "--data-folder", data, "--output-folder", out, *TINY_TRAIN, "--epochs", 2, "--resume")
    assert result.exit_code == 1
    line = one_error_line(result.output)
    assert "checkpoint_shapes_5_1.pth.tar" in line and "no space left" in line
    assert (out / "checkpoint_shapes_5_1.pth.tar").read_bytes() == before
    assert not [n for n in os.listdir(out) if n.endswith(".tmp")]


def test_permission_denied_is_one_line(data, tmp_path, run, monkeypatch):
    import capcli.safeio

    def denied(path):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), path)

    monkeypatch.setattr(capcli.safeio, "create_exclusive", denied)
    result = run("train", "--data-folder", data, "--output-folder", tmp_path / "out", *TINY_TRAIN, "--epochs", 1)
    assert result.exit_code == 1
    assert "permission denied" in one_error_line(result.output)


@pytest.mark.parametrize("damage", ["truncate", "random", "empty"])
def test_torn_hdf5_is_named_before_training(data, tmp_path, run, damage):
    copy = tmp_path / "data"
    shutil.copytree(data, copy, ignore=shutil.ignore_patterns("FEATURES_*"))
    images = copy / "TRAIN_IMAGES_shapes_5_1.hdf5"
    whole = images.read_bytes()
    images.write_bytes({"truncate": whole[:len(whole) // 2], "random": os.urandom(len(whole)), "empty": b""}[damage])
    result = run("train", "--data-folder", copy, "--output-folder", tmp_path / "out", *TINY_TRAIN, "--epochs", 1)
    assert result.exit_code == 1
    line = one_error_line(result.output)
    assert str(images) in line and "truncated or corrupt" in line and "--force" in line
    assert not (tmp_path / "out" / "checkpoint_shapes_5_1.pth.tar").exists()


def test_missing_validation_split_is_named(data, tmp_path, run):
    copy = tmp_path / "data"
    shutil.copytree(data, copy, ignore=shutil.ignore_patterns("FEATURES_*"))
    os.remove(copy / "VAL_IMAGES_shapes_5_1.hdf5")
    result = run("train", "--data-folder", copy, "--output-folder", tmp_path / "out", *TINY_TRAIN, "--epochs", 1)
    assert result.exit_code == 1
    assert "VAL split" in one_error_line(result.output)


def test_prep_refuses_a_source_without_validation_images(tmp_path, run):
    folder = tmp_path / "images"
    entries = [karpathy_entry(f"{i}.jpg", "train" if i < 4 else "test", [["a", "red", "dog"]]) for i in range(6)]
    for i in range(6):
        write_image(folder / f"{i}.jpg", (40 * i, 20, 20))
    source = write_karpathy(tmp_path / "dataset_flickr8k.json", "flickr8k", entries)
    result = run("prep", "--captions", source, "--image-folder", folder, "--output-folder", tmp_path / "out",
                 "--min-word-freq", 1, "--workers", 1)
    assert result.exit_code == 1
    assert "no usable validation image" in one_error_line(result.output)
    assert not [n for n in os.listdir(tmp_path / "out") if n.startswith("WORDMAP")]


def test_a_fifo_given_as_an_image_is_refused_without_hanging(trained_run, tmp_path):
    _, out = trained_run
    fifo = tmp_path / "photo.jpg"
    os.mkfifo(fifo)
    done = capcli("caption", fifo, "-m", out / "BEST_shapes_5_1.pth.tar", "--output-folder", tmp_path / "pics",
                  timeout=120)
    assert done.returncode == 1
    assert "not a regular file" in one_error_line(done.stderr)


def test_a_fifo_in_a_caption_file_is_skipped_with_its_reason(tmp_path):
    from capcli.config import PrepConfig
    from capcli.data.jsonfiles import read_json
    from capcli.data.prep import run_prep

    folder = tmp_path / "images"
    splits = ["train", "train", "train", "val", "test"]
    for i in range(5):
        write_image(folder / f"{i}.jpg", (40 * i, 20, 20))
    os.mkfifo(folder / "pipe.jpg")
    entries = [karpathy_entry(f"{i}.jpg", s, [["a", "dog"]]) for i, s in enumerate(splits)]
    entries.append(karpathy_entry("pipe.jpg", "train", [["a", "pipe"]]))
    source = write_karpathy(tmp_path / "dataset_flickr8k.json", "flickr8k", entries)
    result = run_prep(PrepConfig(dataset="flickr8k", json_path=source, image_folder=str(folder),
                                 output_folder=str(tmp_path / "out"), min_word_freq=1, image_size=32))
    assert result.counts == {"TRAIN": 3, "VAL": 1, "TEST": 1}
    manifest = read_json(str(tmp_path / "out" / "MANIFEST_flickr8k_5_1.json"))
    assert [s["source"] for s in manifest["skipped"]] == ["pipe.jpg"]
    assert "not a regular file" in manifest["skipped"][0]["reason"]


@pytest.mark.parametrize("option, name", [("--captions", "dataset_flickr8k.json"), ("--captions", "results.csv")])
def test_a_fifo_given_as_a_caption_file_is_refused_without_hanging(tmp_path, option, name):
    fifo = tmp_path / name
    os.mkfifo(fifo)
    (tmp_path / "images").mkdir()
    done = capcli("prep", option, fifo, "--image-folder", tmp_path / "images", "--output-folder",
                  tmp_path / "out", timeout=120)
    assert done.returncode == 1
    assert "not a regular file" in one_error_line(done.stderr)


FILL_HDF5 = """
import sys
import numpy as np
from capcli.data.hdf5 import atomic_hdf5
try:
    with atomic_hdf5(sys.argv[1]) as (f, guard):
        data = f.create_dataset("features", (0, 64), maxshape=(None, 64), dtype="float32", chunks=(1, 64))
        for i in range(100_000):  # small chunks: the failing writes are many and small
            data.resize(i + 1, axis=0)
            data[i] = np.full(64, i, dtype="float32")
            guard.check()
except OSError as exc:
    print(exc.errno, exc.filename)
    sys.exit(1)
"""


def test_hdf5_on_a_full_disk_with_small_writes_never_crashes_the_interpreter(mount_tmpfs):
    disk = mount_tmpfs("300k")
    target = disk / "FEATURES_TRAIN_x.hdf5"
    done = subprocess.run([sys.executable, "-c", FILL_HDF5, str(target)], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 1, (done.returncode, done.stderr[-2000:])  # -11 would be the HDF5 crash
    assert done.stdout.split() == [str(errno.ENOSPC), str(target)] and "Traceback" not in done.stderr
    assert os.listdir(disk) == []  # no temporary file, no half-written cache


@pytest.mark.parametrize("error, said", [
    (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB (GPU 0; 79.11 GiB total)"),
     "the GPU ran out of memory"),
    (RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory: you tried "
                  "to allocate 21474836480 bytes"), "the machine ran out of memory")])
def test_running_out_of_memory_in_training_is_one_line(data, tmp_path, run, monkeypatch, error, said):
    """A batch too large for the GPU (or the machine): one line that says what to change, exit 1;
    the run's lock is released."""
    from capcli.training.train import Trainer

    def too_big(self, *batch):
        raise error

    monkeypatch.setattr(Trainer, "train_step", too_big)
    out = tmp_path / "out"
    result = run("train", "--data-folder", data, "--output-folder", out, *TINY_TRAIN, "--epochs", 1)
    assert result.exit_code == 1, result.output
    assert said in result.output and "--batch-size" in result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()[-1]) < 400
    def bug(self, *batch):
        raise RuntimeError("a bug")

    monkeypatch.setattr(Trainer, "train_step", bug)
    result = run("train", "--data-folder", data, "--output-folder", out, *TINY_TRAIN, "--epochs", 1)
    assert isinstance(result.exception, RuntimeError) and str(result.exception) == "a bug"  # bugs keep their traceback
