"""A run's life as a user sees it: one line per epoch, the exact resume command after a signal,
exit code 130 on Ctrl-C, one process per run, and --epochs that asks for nothing."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time

import pytest

from capcli.runs.feed import read_feed
from capcli.store.checkpoint import load_checkpoint
from tests.conftest import TINY_TRAIN, run_subprocess

EPOCH_LINE = re.compile(r"^epoch (\d+)/(\d+)  train loss (\d+\.\d{3}) top-5 (\d+\.\d) \| val loss (\d+\.\d{3}) "
                        r"top-5 (\d+\.\d) BLEU-4 (\d\.\d{4}) CIDEr-D (\d+\.\d{4}) content (\d\.\d{3}) \| "
                        r"lr (\d\.\de[-+]\d\d) \| \d+:\d\d \| saved( BEST)?$")


def train_args(data, out, *extra):
    return ("train", "--data-folder", data, "--output-folder", out, *TINY_TRAIN, *extra)


def _wait_for_feed(path, timeout=120.0) -> None:
    deadline = time.monotonic() + timeout
    while not (path.exists() and any(line.get("event") == "step" for line in read_feed(str(path)))):
        assert time.monotonic() < deadline, "the run never wrote a step"
        time.sleep(0.05)


def test_each_epoch_prints_one_line_with_the_feeds_figures(data, tmp_path, run):
    out = tmp_path / "out"
    result = run(*train_args(data, out, "--epochs", 2))
    assert result.exit_code == 0, result.output
    lines = [m for m in map(EPOCH_LINE.match, result.output.splitlines()) if m]
    assert [m.group(1, 2) for m in lines] == [("1", "2"), ("2", "2")]
    feed = read_feed(str(out / "metrics_shapes_5_1.jsonl"))
    for m in lines:
        epoch = int(m.group(1))
        train = next(x for x in feed if x["event"] == "epoch" and x["split"] == "train" and x["epoch"] == epoch)
        val = next(x for x in feed if x["event"] == "epoch" and x["split"] == "val" and x["epoch"] == epoch)
        assert float(m.group(3)) == pytest.approx(train["loss"], abs=5e-4)
        assert float(m.group(4)) == pytest.approx(train["top5"], abs=0.05)
        assert float(m.group(5)) == pytest.approx(val["loss"], abs=5e-4)
        assert float(m.group(7)) == pytest.approx(val["bleu4"], abs=5e-5)
        assert float(m.group(8)) == pytest.approx(val["cider_d"], abs=5e-5)
        assert float(m.group(9)) == pytest.approx(val["content"], abs=5e-4)  # the shapes set: content accuracy
        assert float(m.group(10)) == pytest.approx(val["lr"], rel=0.05)
        assert (m.group(11) == " BEST") == val["improved"]
    assert lines[0].group(11) == " BEST"  # the first epoch always gives a BEST


def test_ctrl_c_exits_130_with_a_command_that_resumes(data, tmp_path, run):
    out = tmp_path / "out"
    proc = run_subprocess(*train_args(data, out, "--epochs", 50, "--overwrite"))
    _wait_for_feed(out / "metrics_shapes_5_1.jsonl")
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    hint = err.strip().splitlines()[-1].split("continue with: ", 1)[1]
    words = shlex.split(hint)
    assert words[:2] == ["capcli", "train"] and "--resume" in words and "--overwrite" not in words
    assert str(out) in words and str(data) in words and words[words.index("--epochs") + 1] == "50"

    stopped_at = load_checkpoint(str(out / "checkpoint_shapes_5_1.pth.tar"))["step"]
    words[words.index("--epochs") + 1] = "1"  # the pasted command, asking only to finish the first epoch
    result = run(*words[1:])
    assert result.exit_code == 0, result.output
    resumed = load_checkpoint(str(out / "checkpoint_shapes_5_1.pth.tar"))
    assert resumed["epoch"] == 1 and resumed["step"] == 11 > stopped_at  # 32 images, 3 a batch: 11 steps


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])  # SIGHUP: the SSH session dropped
def test_sigterm_or_sighup_saves_and_exits_128_plus_the_signal(data, tmp_path, signum):
    out = tmp_path / "out"
    proc = run_subprocess(*train_args(data, out, "--epochs", 50))
    _wait_for_feed(out / "metrics_shapes_5_1.jsonl")
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signum and "continue with: capcli train" in err
    assert f"stopped by {signal.Signals(signum).name}" in err
    assert load_checkpoint(str(out / "checkpoint_shapes_5_1.pth.tar"))["step"] >= 1


def test_two_processes_on_one_run_one_trains_the_other_refuses(data, tmp_path):
    out = tmp_path / "out"
    args = train_args(data, out, "--epochs", 50, "--overwrite")
    first, second = run_subprocess(*args), run_subprocess(*args)  # started together
    feed = out / "metrics_shapes_5_1.jsonl"
    deadline = time.monotonic() + 120
    while first.poll() is None and second.poll() is None:
        assert time.monotonic() < deadline, "neither process refused"
        time.sleep(0.05)
    loser, winner = (first, second) if first.poll() is not None else (second, first)
    _, err = loser.communicate(timeout=30)
    assert loser.returncode == 1
    assert err.strip().count("\n") == 0 and f"in use by PID {winner.pid}" in err
    _wait_for_feed(feed)
    winner.send_signal(signal.SIGTERM)
    winner.communicate(timeout=120)
    steps = [line["step"] for line in read_feed(str(feed)) if line["event"] == "step"]
    assert steps and len(steps) == len(set(steps))
    assert [line["event"] for line in read_feed(str(feed))].count("start") == 1


def test_lock_of_a_dead_process_is_taken_over_with_a_note(data, tmp_path, run):
    out = tmp_path / "out"
    out.mkdir()
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    (out / "shapes_5_1.lock").write_text(json.dumps({"pid": gone.pid, "host": os.uname().nodename, "started": 1}))
    result = run(*train_args(data, out, "--epochs", 1))
    assert result.exit_code == 0, result.output
    assert f"took over {out / 'shapes_5_1.lock'} from PID {gone.pid}" in result.output
    assert (out / "shapes_5_1.lock").read_text() == ""  # released at the end


def test_a_symlink_at_the_lock_name_is_refused(data, tmp_path, run):
    out, target = tmp_path / "out", tmp_path / "elsewhere.txt"
    out.mkdir()
    target.write_text("keep")
    os.symlink(target, out / "shapes_5_1.lock")
    result = run(*train_args(data, out, "--epochs", 1))
    assert result.exit_code == 1 and "symbolic link" in result.output
    assert target.read_text() == "keep" and not (out / "checkpoint_shapes_5_1.pth.tar").exists()


def test_epochs_zero_trains_nothing_and_writes_no_checkpoint(data, tmp_path, run):
    out = tmp_path / "out"
    result = run(*train_args(data, out, "--epochs", 0))
    assert result.exit_code == 0
    assert "Nothing was trained" in result.output and "Checkpoints" not in result.output
    assert not out.exists()


def test_resume_with_epochs_already_done_changes_nothing(data, tmp_path, run):
    out = tmp_path / "out"
    assert run(*train_args(data, out, "--epochs", 1)).exit_code == 0
    before = {f: ((out / f).read_bytes(), (out / f).stat().st_ino) for f in os.listdir(out) if not f.endswith(".lock")}
    result = run(*train_args(data, out, "--epochs", 1, "--resume"))
    assert result.exit_code == 0
    assert "Nothing was trained" in result.output and "has done 1 epoch(s)" in result.output
    after = {f: ((out / f).read_bytes(), (out / f).stat().st_ino) for f in os.listdir(out) if not f.endswith(".lock")}
    assert after == before  # not even rewritten in place (a dashboard would start over)


@pytest.fixture(scope="module")
def real_data(tmp_path_factory):
    """A tiny Flickr8k-style set (Karpathy JSON + JPEG folder): a real dataset, not shapes."""
    from capcli.config import PrepConfig
    from capcli.data.prep import run_prep
    from tests.conftest import distinct_colour, karpathy_entry, write_image, write_karpathy

    root = tmp_path_factory.mktemp("flickr")
    splits = ["train"] * 8 + ["val"] * 2 + ["test"] * 2
    entries = []
    for i, split in enumerate(splits):
        write_image(root / "Flicker8k_Dataset" / f"{i}.jpg", distinct_colour(i), size=(40, 30))
        entries.append(karpathy_entry(f"{i}.jpg", split, [["a", "dog", "runs"], ["a", "dog", "plays"]]))
    source = write_karpathy(root / "dataset_flickr8k.json", "flickr8k", entries)
    run_prep(PrepConfig(dataset="flickr8k", json_path=source, image_folder=str(root / "Flicker8k_Dataset"),
                        output_folder=str(root / "data"), min_word_freq=1, image_size=32, captions_per_image=2))
    return root / "data"


def _real_args(data, out, *extra):
    tiny = [str(a) for a in TINY_TRAIN if str(a) != "--frozen-encoder"]
    return ("train", "--data-folder", data, "--output-folder", out, *tiny, "--epochs", 1, *extra)


def test_real_data_is_pretrained_by_default_and_offline_says_how(real_data, tmp_path, run, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    monkeypatch.setattr("capcli.model.pretrained.imagenet_url",
                        lambda name: "http://127.0.0.1:9/models/resnet18-f37072fd.pth")
    result = run(*_real_args(real_data, tmp_path / "out"))
    assert result.exit_code == 1
    line = result.output.strip().splitlines()[-1]
    assert str(tmp_path / "th" / "hub" / "checkpoints" / "resnet18-f37072fd.pth") in line
    assert "http://127.0.0.1:9/models/resnet18-f37072fd.pth" in line and "--pretrained-weights" in line
    result = run(*_real_args(real_data, tmp_path / "out", "--no-pretrained"))
    assert result.exit_code == 0, result.output
    assert "warning: --no-pretrained" in result.output and "captions will be poor" in result.output


def test_pretrained_downloads_into_torch_home_and_trains(real_data, tmp_path, run, monkeypatch):
    import hashlib

    import torch

    from capcli.runtime.torch_compat import import_torchvision

    torchvision = import_torchvision()
    served = tmp_path / "served" / "resnet18.pth"
    served.parent.mkdir()
    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18().state_dict(), served)
    name = f"resnet18-{hashlib.sha256(served.read_bytes()).hexdigest()[:8]}.pth"
    os.rename(served, served.with_name(name))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    monkeypatch.setattr("capcli.model.pretrained.imagenet_url", lambda _: served.with_name(name).as_uri())
    result = run(*_real_args(real_data, tmp_path / "out", "--pretrained"))
    assert result.exit_code == 0, result.output
    cached = tmp_path / "th" / "hub" / "checkpoints" / name
    assert cached.read_bytes() == served.with_name(name).read_bytes()

    saved = load_checkpoint(str(tmp_path / "out" / "checkpoint_flickr8k_2_1.pth.tar"))
    assert saved["train_config"]["pretrained"] is True


@pytest.mark.parametrize("command", ["train", "a2c"])
def test_resume_takes_the_lock_before_it_reads_the_runs_checkpoint(data, tmp_path, run, command):
    """train and a2c open a run in one order (issue 28): the lock first, then the run's own
    checkpoint; a2c used to read its checkpoint (here: none) before it asked for the lock."""
    out = tmp_path / "out"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom capcli.runs.lock import run_lock\n"
                               "with run_lock(sys.argv[1]):\n    print('held', flush=True)\n    time.sleep(120)",
                               str(out / "mine.lock")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        result = run(command, "--resume", "--run-name", "mine", "--data-folder", data, "--output-folder", out)
    finally:
        holder.kill()
        holder.communicate()
    assert result.exit_code == 1 and f"in use by PID {holder.pid}" in result.output, result.output
    assert sorted(os.listdir(out)) == ["mine.lock"]
