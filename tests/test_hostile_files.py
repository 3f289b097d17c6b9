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


@pytest.fixture(scope="module")
def _exported(trained_run, tmp_path_factory):
    """The trained run's output folder, copied once, with ``BEST_….bundle`` exported into it."""
    _, out = trained_run
    copy = tmp_path_factory.mktemp("exported") / "out"
    shutil.copytree(out, copy)
    done = _capcli("export", "--output-folder", copy, timeout=120)
    assert done.returncode == 0, done.stderr
    return copy


@pytest.fixture
def bundle_copy(trained_run, _exported, tmp_path):
    """(data folder, a copy of the exported run folder, its bundle): each test edits its own."""
    copy = tmp_path / "box" / "out"
    shutil.copytree(_exported, copy)
    return trained_run[0], copy, copy / f"BEST_{NAME}.bundle"


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
    from capcli.paths import checkpoint_meta_file
    from capcli.store.sidecar import read_meta

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


# --- 2. FIFOs where a file is read -------------------------------------------------------------


def _fifo(path) -> None:
    if os.path.lexists(path):
        if os.path.isdir(path):
            shutil.rmtree(path)
        else:
            os.remove(path)
    os.mkfifo(path)


def _not_regular(line: str, path) -> None:
    assert "not a regular file" in line and str(path) in line


def test_a_fifo_lock_neither_hangs_train_resume_nor_runs(run_copy):
    data, out = run_copy
    shutil.copy(out / BEST, out / f"checkpoint_{NAME}.pth.tar")
    _fifo(out / f"{NAME}.lock")
    line = _one_error_line(_capcli("train", "--resume", "--data-folder", data, "--output-folder", out,
                                   "--epochs", 2, timeout=60))
    _not_regular(line, out / f"{NAME}.lock")
    done = _capcli("runs", "--output-folder", out, timeout=60)
    assert done.returncode == 0, done.stderr
    assert NAME in done.stdout


def test_a_fifo_checkpoint_is_one_line_for_export_evaluate_and_caption(run_copy):
    data, out = run_copy
    image = sorted((data / "shapes" / "images").iterdir())[0]
    _fifo(out / "fifo.pth.tar")
    for args in (("export", "-m", out / "fifo.pth.tar"),
                 ("evaluate", "-m", out / "fifo.pth.tar", "--data-folder", data, "--output-folder", out),
                 ("caption", image, "-m", out / "fifo.pth.tar")):
        _not_regular(_one_error_line(_capcli(*args, timeout=60)), out / "fifo.pth.tar")


@pytest.mark.parametrize("part", ["model.safetensors", "config.json", "word_map.json"])
def test_a_fifo_in_a_bundle_is_one_line(bundle_copy, part):
    data, out, bundle = bundle_copy
    _fifo(bundle / part)
    image = sorted((data / "shapes" / "images").iterdir())[0]
    _not_regular(_one_error_line(_capcli("caption", image, "-m", bundle, timeout=60)), bundle / part)


def test_a_fifo_evaluation_file_does_not_hang_export(run_copy):
    _, out = run_copy
    _fifo(out / f"evaluation_BEST_{NAME}_test.json")
    done = _capcli("export", "--output-folder", out, timeout=60)
    assert done.returncode == 0, done.stderr
    assert os.path.isfile(out / f"BEST_{NAME}.bundle" / "config.json")


def test_a_fifo_sidecar_or_lock_reads_as_absent(run_copy):
    from capcli.paths import checkpoint_meta_file
    from capcli.runs.lock import read_holder
    from capcli.store.sidecar import read_meta

    _, out = run_copy
    _fifo(checkpoint_meta_file(str(out / BEST)))
    assert read_meta(str(out / BEST)) is None
    _fifo(out / "x.lock")
    assert read_holder(str(out / "x.lock")) is None


# --- 3. one table of limits --------------------------------------------------------------------


def test_evaluate_caps_the_beam_like_caption(run, tmp_path):
    from capcli.limits import LIMITS

    top = LIMITS["beam"].maximum
    for command in (("evaluate", "--data-folder", tmp_path / "none", "--beams", f"1,{top + 1}"),
                    ("caption", tmp_path / "none.png", "--beam", top + 1)):
        result = run(*command, "-m", tmp_path / "none.pth.tar")
        assert result.exit_code == 2, result.output
        assert str(top) in result.output


@pytest.mark.parametrize("change", [{"model_config__decoder_dim": 10**9}, {"model_config__embed_dim": 10**6},
                                    {"max_len": 10**6}, {"image_size": 10**6},
                                    {"train_config__batch_size": 10**9}])
def test_sizes_in_a_checkpoint_are_bounded_before_anything_is_built(run_copy, change):
    data, out = run_copy
    _edit_checkpoint(out / BEST, **change)
    key = next(iter(change)).split("__")[-1]
    image = sorted((data / "shapes" / "images").iterdir())[0]
    line = _one_error_line(_capcli("caption", image, "-m", out / BEST, timeout=60))
    assert key in line and "outside" in line and BEST in line


@pytest.mark.parametrize("key", ["max_len", "image_size", "decoder_dim"])
def test_sizes_in_a_bundle_config_are_bounded(bundle_copy, key):
    data, out, bundle = bundle_copy
    config_file = bundle / "config.json"
    config = json.loads(config_file.read_text())
    if key == "decoder_dim":
        config["model_config"][key] = 10**9
    else:
        config[key] = 10**6
    config_file.write_text(json.dumps(config))
    image = sorted((data / "shapes" / "images").iterdir())[0]
    line = _one_error_line(_capcli("caption", image, "-m", config_file.parent, timeout=60))
    assert key in line and "outside" in line and "config.json" in line


# --- 5. export replaces a bundle with no moment without one -----------------------------------

_KILLED_EXPORT = """
import os, sys
import capcli.safeio as safeio
if sys.argv[3] == "no-exchange":
    safeio._exchange = lambda first, second: False  # a system without rename-exchange
real = os.rename
def rename(src, dst, *args, **kwargs):
    real(src, dst, *args, **kwargs)
    if os.path.abspath(src) == os.path.abspath(sys.argv[2]):
        os._exit(137)  # killed right after the previous bundle left its name
os.rename = rename
from capcli.store.bundle import export_bundle
export_bundle(sys.argv[1])
"""


@pytest.mark.parametrize("system", ["exchange", "no-exchange"])
def test_export_killed_while_replacing_a_bundle_leaves_one_at_the_same_path(bundle_copy, system):
    from capcli.store.files import read_checkpoint

    data, out, bundle = bundle_copy
    before = json.loads((bundle / "config.json").read_text())["exported_at"]
    done = subprocess.run([sys.executable, "-c", _KILLED_EXPORT, out / BEST, bundle, system],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode in (0, 137), done.stderr
    assert read_checkpoint(str(bundle / "model.safetensors")).source  # a reader finds it by the same path
    assert sorted(os.listdir(bundle)) == ["README.md", "config.json", "model.safetensors", "word_map.json"]
    image = sorted((data / "shapes" / "images").iterdir())[0]
    assert _capcli("caption", image, "-m", bundle).returncode == 0
    again = _capcli("export", "--output-folder", out)
    assert again.returncode == 0, again.stderr
    assert json.loads((bundle / "config.json").read_text())["exported_at"] > before
    assert [e for e in os.listdir(out) if e.startswith(".")] == []


# --- 6. evaluate on other data -------------------------------------------------------------------


def _renamed_data(data, folder, name: str):
    """A copy of the prepared data set under another name (same images and vocabulary)."""
    folder.mkdir()
    for entry in os.listdir(data):
        if entry.endswith((".hdf5", ".json")) and not entry.startswith("FEATURES_"):
            shutil.copy(data / entry, folder / entry.replace(NAME, name))
    manifest = folder / f"MANIFEST_{name}.json"
    manifest.write_text(manifest.read_text().replace(f'"name": "{NAME}"', f'"name": "{name}"'))
    return folder


def _evaluate(run, data, out, name):
    return run("evaluate", "--data-folder", data, "--data-name", name, "--output-folder", out, "-m", out / BEST,
               "--precision", "fp32", "--beams", "1", "--metrics", "bleu")


def test_evaluate_refuses_data_with_another_vocabulary(run_copy, run, tmp_path):
    data, out = run_copy
    other = _renamed_data(data, tmp_path / "other", "other_5_1")
    word_map = json.loads((other / "WORDMAP_other_5_1.json").read_text())
    first, second = sorted(w for w in word_map if not w.startswith("<"))[:2]
    word_map[first], word_map[second] = word_map[second], word_map[first]
    (other / "WORDMAP_other_5_1.json").write_text(json.dumps(word_map))
    before = {e: (out / e).read_bytes() for e in os.listdir(out) if e.startswith(("evaluation_", "results_"))}
    result = _evaluate(run, other, out, "other_5_1")
    assert result.exit_code == 1, result.output
    assert "vocabulary" in result.output and "other_5_1" in result.output and BEST in result.output
    after = {e: (out / e).read_bytes() for e in os.listdir(out) if e.startswith(("evaluation_", "results_"))}
    assert after == before  # nothing written, nothing overwritten


def test_evaluations_of_other_data_never_overwrite_the_models_own(run_copy, run, tmp_path):
    data, out = run_copy
    own = _evaluate(run, data, out, NAME)
    assert own.exit_code == 0, own.output
    own_file = out / f"evaluation_BEST_{NAME}_test.json"
    before = own_file.read_text()
    other = _evaluate(run, _renamed_data(data, tmp_path / "other", "other_5_1"), out, "other_5_1")
    assert other.exit_code == 0, other.output
    assert own_file.read_text() == before
    report = json.loads((out / f"evaluation_BEST_{NAME}_other_5_1_test.json").read_text())
    assert report["data"]["name"] == "other_5_1"


# --- 4. deep JSON --------------------------------------------------------------------------------

DEEP = "[" * 100_000 + "]" * 100_000
NESTED = '{"a": ' * 200 + "1" + "}" * 200  # parses, but deeper than capcli's own files ever are


@pytest.mark.parametrize("text", [DEEP, NESTED], ids=["deep", "nested"])
def test_deep_json_in_a_bundle_config_is_one_line(bundle_copy, text):
    data, out, bundle = bundle_copy
    (bundle / "config.json").write_text(text)
    image = sorted((data / "shapes" / "images").iterdir())[0]
    line = _one_error_line(_capcli("caption", image, "-m", bundle, timeout=60))
    assert "config.json" in line and "nested" in line
    assert _capcli("export", "--output-folder", out).returncode == 1  # not provably a bundle: kept


@pytest.mark.parametrize("text", [DEEP, NESTED], ids=["deep", "nested"])
def test_deep_json_in_a_lock_a_sidecar_or_an_evaluation_reads_as_absent(run_copy, text):
    from capcli.paths import checkpoint_meta_file
    from capcli.runs.lock import read_holder
    from capcli.store.sidecar import read_meta

    _, out = run_copy
    (out / f"{NAME}.lock").write_text(text)
    assert read_holder(str(out / f"{NAME}.lock")) is None
    done = _capcli("runs", "--output-folder", out, timeout=60)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    meta_file = checkpoint_meta_file(str(out / BEST))
    with open(meta_file, "w") as f:
        f.write(text)
    os.utime(meta_file, (os.stat(out / BEST).st_mtime + 1,) * 2)
    assert read_meta(str(out / BEST)) is None
    (out / f"evaluation_BEST_{NAME}_test.json").write_text(text)
    done = _capcli("export", "--output-folder", out, timeout=60)
    assert done.returncode == 0, done.stderr


def test_read_json_refuses_deep_json_in_one_line(tmp_path):
    from capcli.data.jsonfiles import read_json
    from capcli.errors import InputError

    (tmp_path / "deep.json").write_text(DEEP)
    with pytest.raises(InputError, match="nested too deeply"):
        read_json(str(tmp_path / "deep.json"))


# --- 7. lock ownership by PID and start time -----------------------------------------------------


def _feed_and_lock(folder, name, record):
    from capcli.runs.feed import MetricsFeed

    feed = MetricsFeed(str(folder / f"metrics_{name}.jsonl"), "train")
    feed.write("start", epoch=0, step=0, epochs=3, run=name, data="d_5_5")
    feed.write("step", epoch=1, step=3)
    (folder / f"{name}.lock").write_text(json.dumps(record))


def test_a_lock_naming_a_live_but_unrelated_pid_is_stale(tmp_path):
    import socket

    from capcli.runs.lock import holder_live, process_start, read_holder, run_lock
    from capcli.runs.summary import list_runs

    host, me = socket.gethostname(), os.getpid()
    _feed_and_lock(tmp_path, "reused", {"pid": me, "host": host, "started": 1.0, "pid_start": "another:1"})
    _feed_and_lock(tmp_path, "mine", {"pid": me, "host": host, "started": 1.0, "pid_start": process_start(me)})
    _feed_and_lock(tmp_path, "old", {"pid": me, "host": host, "started": 1.0})  # before pid_start: still read
    assert read_holder(str(tmp_path / "reused.lock")) is None
    assert read_holder(str(tmp_path / "old.lock"))["pid"] == me
    states = {run.name: run.state for run in list_runs(str(tmp_path))}
    assert states == {"reused": "crashed", "mine": "running", "old": "running"}
    with run_lock(str(tmp_path / "new.lock")):
        record = json.loads((tmp_path / "new.lock").read_text())
        assert record["pid_start"] == process_start(me) and holder_live(record)


# --- 8. a signal while the model is built --------------------------------------------------------


def test_sigterm_while_the_model_is_built_is_one_line_and_frees_the_lock(trained_run, tmp_path):
    import signal
    import time

    from tests.conftest import TINY_TRAIN, run_subprocess

    data, _ = trained_run
    out = tmp_path / "out"
    # resnet50 takes a while to build: the signal comes before the first step
    args = [a if a != "resnet18" else "resnet50" for a in map(str, TINY_TRAIN)]
    proc = run_subprocess("train", "--data-folder", data, "--output-folder", out, *args, "--epochs", 1)
    lock = out / f"{NAME}.lock"
    deadline = time.monotonic() + 120
    while not (lock.exists() and lock.read_text()) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 143, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: stopped by SIGTERM"), stderr
    assert lock.read_text() == ""


# --- 9. messages name the files the user knows -----------------------------------------------------


def test_write_errors_name_the_final_path_not_the_hidden_temporary(tmp_path):
    import errno

    from capcli.errors import os_error_message
    from capcli.safeio import atomic_folder, atomic_path

    target = tmp_path / "model.bundle"
    with pytest.raises(OSError) as caught:
        with atomic_folder(str(target)) as staging:
            open(os.path.join(staging, "missing", "config.json"), "w")
    message = os_error_message(caught.value)
    assert message.startswith(str(target / "missing" / "config.json")) and ".tmp" not in message
    with pytest.raises(OSError) as caught:
        with atomic_path(str(tmp_path / "images.hdf5")) as temp:
            raise OSError(errno.EIO, f"Unable to synchronously create file (name = '{temp}')")
    message = os_error_message(caught.value)
    assert str(tmp_path / "images.hdf5") in message and ".tmp" not in message
    assert os.listdir(tmp_path) == []
