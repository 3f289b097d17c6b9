"""Crash safety and idempotence of `capcli prep`: a SIGKILL mid-write never leaves a file under a
final name (or touches the previous set), and an unchanged re-run rewrites nothing."""

from __future__ import annotations

import hashlib
import os
import signal
import time

import pytest

from tests.conftest import run_subprocess

FINAL_PREFIXES = ("WORDMAP_", "TRAIN_", "VAL_", "TEST_", "MANIFEST_")


@pytest.fixture(scope="module")
def shapes_source(tmp_path_factory):
    """A 600-image shapes set in Karpathy format, used as a 'real' dataset by the tests."""
    from capcli.config import PrepConfig
    from capcli.data.prep import _generate_shapes
    from capcli.runtime.progress import SILENT

    folder = tmp_path_factory.mktemp("src")
    json_path, images = _generate_shapes(PrepConfig(output_folder=str(folder), num_images=600), 2, SILENT)
    return json_path, images


def _prep_args(source, out, *extra):
    json_path, images = source
    return ("prep", "--dataset", "flickr8k", "--captions", json_path, "--image-folder", images,
            "--output-folder", out, "--workers", 1, *extra)


def _final_files(out):
    return {p: hashlib.sha256(open(os.path.join(out, p), "rb").read()).hexdigest()
            for p in os.listdir(out) if p.startswith(FINAL_PREFIXES)}


def _kill_while_writing(args, out):
    """Start prep, SIGKILL it once its staged TRAIN images file is being written."""
    proc = run_subprocess(*args)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        staged = [os.path.join(out, d) for d in os.listdir(out) if d.startswith(".prep-")] \
            if os.path.isdir(out) else []
        files = [os.path.join(d, f) for d in staged for f in os.listdir(d) if f.startswith("TRAIN_IMAGES")]
        if files and os.path.getsize(files[0]) > 2_000_000:
            break
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.01)
    else:
        pytest.fail("prep never started writing")
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def test_sigkill_leaves_no_final_file_and_rerun_completes(tmp_path, shapes_source, run):
    out = str(tmp_path / "out")
    _kill_while_writing(_prep_args(shapes_source, out), out)
    assert _final_files(out) == {}
    result = run(*_prep_args(shapes_source, out))
    assert result.exit_code == 0, result.output
    assert len(_final_files(out)) == 14  # word map, per split IMAGES, CAPTIONS, CAPLENS, REFERENCES, manifest
    assert not [d for d in os.listdir(out) if d.startswith(".prep-")]  # stale staging removed


def test_sigkill_during_force_leaves_previous_set_untouched(tmp_path, shapes_source, run):
    out = str(tmp_path / "out")
    assert run(*_prep_args(shapes_source, out)).exit_code == 0
    before = _final_files(out)
    _kill_while_writing(_prep_args(shapes_source, out, "--force"), out)
    assert _final_files(out) == before


def test_rerun_is_up_to_date_and_force_rewrites(tmp_path, run):
    out = tmp_path / "out"
    args = ("prep", "--num-images", 20, "--output-folder", out, "--image-size", 32)
    assert run(*args).exit_code == 0
    mtimes = {p: os.stat(out / p).st_mtime_ns for p in _final_files(out)}
    again = run(*args)
    assert again.exit_code == 0 and "up to date" in again.output
    assert {p: os.stat(out / p).st_mtime_ns for p in _final_files(out)} == mtimes
    changed = run(*args, "--max-len", 30)  # another option: a new build
    assert changed.exit_code == 0 and "Prepared" in changed.output
    forced = run(*args, "--max-len", 30, "--force")
    assert forced.exit_code == 0 and "Prepared" in forced.output
    assert all(os.stat(out / p).st_mtime_ns != t for p, t in mtimes.items())


def test_a_damaged_output_file_is_rebuilt(tmp_path, run):
    out = tmp_path / "out"
    args = ("prep", "--num-images", 20, "--output-folder", out, "--image-size", 32)
    assert run(*args).exit_code == 0
    with open(out / "TRAIN_CAPTIONS_shapes_5_5.json", "a") as f:
        f.write("garbage")
    result = run(*args)
    assert "Prepared" in result.output
