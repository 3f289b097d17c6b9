"""Issue 27: files a colleague, a downloaded checkpoint or a damaged disk hand a user on a shared box.

Names read from files never lead a write out of the output folder, FIFOs never hang a read, sizes
read from files or given as options are bounded by one table, deep JSON is one line, a bundle is
never absent while export replaces it, evaluation files of other data are kept apart, locks are
owned by (PID, start time), a signal while the model is built is one line, and messages name the
files the user knows.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

NAME = "shapes_5_1"
BEST = f"BEST_{NAME}.pth.tar"


def _capcli(*args, cwd=None, timeout=120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "capcli.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=timeout)


def _one_error_line(done: subprocess.CompletedProcess) -> str:
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert "Traceback" not in done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), done.stderr
    return lines[0]


@pytest.fixture
def run_copy(trained_run, tmp_path):
    """(data folder, a copy of the trained run's output folder inside ``tmp_path/box``)."""
    data, out = trained_run
    copy = tmp_path / "box" / "out"
    shutil.copytree(out, copy)
    return data, copy


def _edit_checkpoint(path, **changes) -> None:
    raw = torch.load(path, map_location="cpu", weights_only=True)
    for key, value in changes.items():
        target, _, inner = key.partition("__")
        if inner:
            raw[target][inner] = value
        else:
            raw[key] = value
    torch.save(raw, path)


# --- 1. names read from files ------------------------------------------------------------------


@pytest.mark.parametrize("field", ["run", "data__name"])
def test_a_checkpoint_name_never_leads_a2c_out_of_the_output_folder(run_copy, tmp_path, field):
    data, out = run_copy
    victim = tmp_path / "box" / "victim.lock"
    victim.write_text("keep me")
    _edit_checkpoint(out / BEST, **{field: "../victim"})
    line = _one_error_line(_capcli("a2c", "--checkpoint", out / BEST, "--data-folder", data,
                                   "--output-folder", out, "--epochs", 1))
    assert "not a safe name" in line and "../victim" in line
    assert victim.read_text() == "keep me"
    assert sorted(os.listdir(tmp_path / "box")) == ["out", "victim.lock"]


def test_a_sidecar_with_an_unsafe_run_name_is_not_trusted(run_copy):
    from capcli.checkpoint import read_meta
    from capcli.paths import checkpoint_meta_file

    _, out = run_copy
    meta_file = checkpoint_meta_file(str(out / BEST))
    assert read_meta(str(out / BEST)) is not None
    meta = json.loads(open(meta_file).read())
    meta["run"] = "../../etc"
    stat = os.stat(meta_file)
    with open(meta_file, "w") as f:
        json.dump(meta, f)
    os.utime(meta_file, (stat.st_atime, stat.st_mtime))
    assert read_meta(str(out / BEST)) is None
