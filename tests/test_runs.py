"""Named runs and the run list: --run-name, config_{run}.json, the feed's new fields and heartbeat,
run states (running, finished, stopped, crashed), `capcli runs` (table, --json, a real terminal)
and --tensorboard."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch

from capcli.cli.runs import ago, runs_table
from capcli.runs.feed import STALE_SECONDS, Heartbeat, MetricsFeed, read_feed, samples_of, valid_line
from capcli.runs.summary import RunInfo, list_runs, read_summary, run_state
from capcli.store.checkpoint import load_checkpoint
from tests.conftest import TINY_TRAIN, run_subprocess
from tests.test_terminal import run_in_terminal

DATA = "shapes_5_1"


def train_args(data, out, *extra):
    return ("train", "--data-folder", data, "--output-folder", out, *TINY_TRAIN, *extra)


def _wait_for(path, predicate, seconds=120.0):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if os.path.exists(path) and any(predicate(line) for line in read_feed(str(path))):
            return
        time.sleep(0.1)
    pytest.fail(f"{path}: no such line within {seconds} s")


def _by_name(runs):
    return {run["name"]: run for run in runs}


# --- the acceptance test -----------------------------------------------------------------------


def test_two_named_runs_one_killed_list_as_finished_and_crashed(data, tmp_path, run):
    out = tmp_path / "out"
    done = run(*train_args(data, out, "--run-name", "good", "--epochs", 1))
    assert done.exit_code == 0, done.output
    # one image a step: slow enough to be killed mid-epoch
    proc = run_subprocess(*train_args(data, out, "--run-name", "bad", "--epochs", 50, "--batch-size", 5))
    try:
        _wait_for(out / "metrics_bad.jsonl", lambda line: line["event"] == "heartbeat")  # alive a while
        live = _by_name(json.loads(run("runs", "--output-folder", out, "--json").output))
        assert live["bad"]["state"] == "running" and live["good"]["state"] == "finished"
    finally:
        proc.kill()  # SIGKILL: no end line, the lock names a dead process
        proc.communicate(timeout=30)
    listed = run("runs", "--output-folder", out, "--json")  # at once: no heartbeat has to go stale first
    assert listed.exit_code == 0, listed.output
    runs = _by_name(json.loads(listed.output))
    assert set(runs) == {"good", "bad"}
    assert runs["good"]["state"] == "finished" and runs["bad"]["state"] == "crashed"
    good = runs["good"]
    assert (good["data"], good["stage"], good["epochs_done"], good["epochs_total"]) == (DATA, "train", 1, 1)
    val = [line for line in read_feed(str(out / "metrics_good.jsonl")) if line.get("split") == "val"]
    assert good["best_bleu4"] == val[0]["bleu4"] and good["best_cider_d"] == val[0]["cider_d"]
    bad = runs["bad"]
    assert bad["epochs_total"] == 50 and bad["epochs_done"] < 50
    assert good["feed"] == str(out / "metrics_good.jsonl")
    assert set(good) == {"name", "data", "stage", "epochs_done", "epochs_total", "best_bleu4", "best_cider_d",
                         "state", "last_update", "feed", "ended"}
    assert good["ended"] == "completed" and bad["ended"] is None
    table = run("runs", "--output-folder", out)
    assert table.exit_code == 0
    lines = table.output.splitlines()
    assert lines[0].split() == ["RUN", "DATA", "STAGE", "EPOCHS", "BLEU-4", "CIDEr-D", "STATE", "UPDATED"]
    assert lines[1].split()[:4] == ["bad", DATA, "train", f"{bad['epochs_done']}/50"] and "crashed" in lines[1]
    assert lines[2].split()[:7] == ["good", DATA, "train", "1/1", f"{good['best_bleu4']:.4f}",
                                    f"{good['best_cider_d']:.4f}", "finished"]
    assert lines[2].endswith("s ago") and all(len(line) <= 80 for line in lines)
    rc, screen = run_in_terminal("runs", "--output-folder", out, cwd=tmp_path, timeout=60)
    assert rc == 0 and "Traceback" not in screen
    shown = [line for line in screen.replace("\r", "").splitlines() if line.strip()]
    assert "crashed" in shown[1] and "finished" in shown[2]
    assert all(len(line) <= 80 for line in (_plain(line) for line in shown))


def _plain(text: str) -> str:
    import re

    return re.sub(r"\x1b\[[0-9;]*m", "", text)


def test_sigint_lists_as_stopped_with_an_end_line(data, tmp_path):
    out = tmp_path / "out"
    proc = run_subprocess(*train_args(data, out, "--run-name", "ctrl-c", "--epochs", 50, "--batch-size", 5))
    _wait_for(out / "metrics_ctrl-c.jsonl", lambda line: line["event"] == "step")
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "--run-name ctrl-c" in err and "--resume" in err  # the command that continues it
    end = read_feed(str(out / "metrics_ctrl-c.jsonl"))[-1]
    assert end["event"] == "end" and end["reason"] == "stopped by SIGINT"
    assert run_state(str(out), "ctrl-c") == "stopped"


# --- states from the lock and the feed ----------------------------------------------------------


def _feed(folder, name, *events):
    feed = MetricsFeed(str(folder / f"metrics_{name}.jsonl"), "train")
    feed.write("start", epoch=0, step=0, epochs=3, run=name, data="d_5_5")
    for event, values in events:
        feed.write(event, **values)
    return feed


def _lock(folder, name, pid, host=None):
    (folder / f"{name}.lock").write_text(json.dumps({"pid": pid, "host": host or socket.gethostname(),
                                                     "started": 1.0}))


def _dead_pid():
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    return gone.pid


def test_states_from_lock_and_feed(tmp_path):
    _feed(tmp_path, "done", ("end", {"reason": "completed"}))
    _feed(tmp_path, "early", ("end", {"reason": "no BLEU-4 gain for 20 epochs"}))
    _feed(tmp_path, "failed")  # an error ended it: the lock was released, no end line
    (tmp_path / "failed.lock").write_text("")
    _feed(tmp_path, "killed", ("step", {"epoch": 1, "step": 3}))
    _lock(tmp_path, "killed", _dead_pid())
    _feed(tmp_path, "live")
    _lock(tmp_path, "live", os.getpid())
    _feed(tmp_path, "remote-live")
    _lock(tmp_path, "remote-live", 1, host="another-host")
    old = _feed(tmp_path, "remote-gone")
    _lock(tmp_path, "remote-gone", 1, host="another-host")
    lines = read_feed(old.path)
    for line in lines:
        line["time"] -= STALE_SECONDS + 5  # its heartbeat stopped 15 s ago
    with open(old.path, "w") as f:
        f.writelines(json.dumps(line) + "\n" for line in lines)
    states = {run.name: run.state for run in list_runs(str(tmp_path))}
    assert states == {"done": "finished", "early": "stopped", "failed": "crashed", "killed": "crashed",
                      "live": "running", "remote-live": "running", "remote-gone": "crashed"}
    assert run_state(str(tmp_path), "killed") == "crashed"
    assert all(run.data == "d_5_5" and run.epochs_total == 3 for run in list_runs(str(tmp_path)))


def test_heartbeat_lines_while_the_block_runs(tmp_path):
    feed = MetricsFeed(str(tmp_path / "metrics_x.jsonl"), "train")
    where = {"epoch": 2, "step": 7}
    with Heartbeat(feed, lambda: where, seconds=0.05):
        time.sleep(0.4)
    lines = read_feed(feed.path)
    count = len(lines)
    assert count >= 3 and all(line["event"] == "heartbeat" and line["step"] == 7 for line in lines)
    time.sleep(0.2)
    assert len(read_feed(feed.path)) == count  # stopped with the block
    summary = read_summary(feed.path)
    assert summary.last_time == lines[-1]["time"] and summary.last_step == 7


def test_old_feeds_still_list_and_summarise(tmp_path, run):
    """A feed from before --run-name: no run/data in its start line, no heartbeat, throughput or samples."""
    lines = [{"time": 1.0, "stage": "train", "event": "start", "epoch": 0, "step": 0, "epochs": 2},
             {"time": 2.0, "stage": "train", "event": "step", "split": "train", "epoch": 1, "step": 1, "loss": 3.0},
             {"time": 3.0, "stage": "train", "event": "epoch", "split": "val", "epoch": 1, "step": 1, "loss": 2.5,
              "bleu4": 0.2, "lr": 0.001},
             {"time": 4.0, "stage": "train", "event": "end", "epoch": 1, "step": 1, "reason": "completed"}]
    (tmp_path / "metrics_flickr8k_5_5.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    [info] = list_runs(str(tmp_path))
    assert info == RunInfo("flickr8k_5_5", "flickr8k_5_5", "train", 1, 2, 0.2, None, "finished", 4.0,
                           str(tmp_path / "metrics_flickr8k_5_5.jsonl"), "completed")
    assert run("metrics", "--output-folder", tmp_path, "--no-charts").exit_code == 0
    table = run("runs", "--output-folder", tmp_path).output.splitlines()
    assert table[1].split()[:6] == ["flickr8k_5_5", "flickr8k_5_5", "train", "1/2", "0.2000", "–"]


def test_runs_table_fits_80_columns_and_says_how_long_ago(tmp_path, run):
    now = 1_000_000.0
    long = RunInfo("a-very-long-experiment-name-with-many-words", "coco_5_5_with_a_long_name", "a2c", 12, 120,
                   0.31416, 1.2345, "running", now - 12, "f")
    lines = runs_table([long], now, 80)
    assert all(len(line) <= 80 for line in lines) and "…" in lines[1] and lines[1].endswith("12s ago")
    assert "12/120" in lines[1] and "0.3142" in lines[1] and "1.2345" in lines[1]
    assert [ago(now - s, now) for s in (0, 59, 61, 3599, 7300)] == ["0s ago", "59s ago", "1m ago", "59m ago",
                                                                     "2h ago"]
    assert ago(now - 3 * 86400 - 5, now) == "3d ago"
    assert ago(now - 40 * 86400, now) == time.strftime("%Y-%m-%d", time.localtime(now - 40 * 86400))
    assert run("runs", "--output-folder", tmp_path).output.startswith("no runs in")
    assert json.loads(run("runs", "--output-folder", tmp_path, "--json").output) == []
    missing = run("runs", "--output-folder", tmp_path / "nowhere")
    assert missing.exit_code == 1 and "no such run folder" in missing.output


# --- --run-name, the configuration, the feed's new fields ---------------------------------------


def test_named_run_files_config_checkpoint_and_feed_fields(data, tmp_path, run):
    out = tmp_path / "out"
    result = run(*train_args(data, out, "--run-name", "exp.1", "--epochs", 1))
    assert result.exit_code == 0, result.output
    assert "Trained exp.1" in result.output
    for file in ("checkpoint_exp.1.pth.tar", "BEST_exp.1.pth.tar", "metrics_exp.1.jsonl", "bleu_scores_exp.1.json",
                 "training_metrics_exp.1.json", "config_exp.1.json", "exp.1.lock"):
        assert (out / file).exists(), file
    assert not list(out.glob(f"*{DATA}*"))  # nothing carries the data's name
    config = json.loads((out / "config_exp.1.json").read_text())
    assert (config["run"], config["stage"], config["data"]) == ("exp.1", "train", {"folder": str(data), "name": DATA})
    assert config["train_config"]["run_name"] == "exp.1" and config["train_config"]["epochs"] == 1
    assert config["model_config"]["decoder_dim"] == 32 and config["model_config"]["vocab_size"] > 4
    assert config["versions"]["torch"] == torch.version.__version__ and config["resumed"] is False
    ckpt = load_checkpoint(str(out / "BEST_exp.1.pth.tar"))
    assert ckpt["run"] == "exp.1" and ckpt["data"]["name"] == DATA
    lines = read_feed(str(out / "metrics_exp.1.jsonl"))
    assert lines[0]["event"] == "start" and (lines[0]["run"], lines[0]["data"]) == ("exp.1", DATA)
    steps = [line for line in lines if line["event"] == "step"]
    assert steps and all(valid_line(line) for line in lines)
    for line in steps:
        assert line["pairs_per_s"] > 0 and line["images_per_s"] > 0 and 0 <= line["data_wait"] <= 1
        per_image = config["train_config"]["captions_per_step"] or 5  # captions trained of each image's 5
        assert line["pairs_per_s"] == pytest.approx(per_image * line["images_per_s"], rel=0.01)
        assert line["mem_mb"] is None and line["peak_mem_mb"] is None  # CPU
    [val] = [line for line in lines if line["event"] == "epoch" and line["split"] == "val"]
    samples = samples_of(val)
    manifest = json.loads((data / f"MANIFEST_{DATA}.json").read_text())
    references = json.loads((data / f"VAL_REFERENCES_{DATA}.json").read_text())
    assert [s["image"] for s in samples] == [e["source"] for e in manifest["images"]["VAL"][:3]]
    assert [s["references"] for s in samples] == references[:3]
    assert all(isinstance(s["generated"], str) for s in samples)


def test_a_run_name_with_a_slash_is_refused_in_one_line(data, tmp_path, run):
    out = tmp_path / "out"
    for bad in ("a/b", "..", ".hidden", "x y"):
        result = run(*train_args(data, out, "--run-name", bad, "--epochs", 1))
        assert result.exit_code == 1 and "not a safe run name" in result.output, result.output
        assert result.output.strip().count("\n") == 0
    a2c = run("a2c", "--checkpoint", out / "x.pth.tar", "--output-folder", out, "--run-name", "../up")
    assert a2c.exit_code == 1 and "not a safe run name" in a2c.output
    assert not out.exists()


def test_resume_finds_the_run_by_its_name(data, tmp_path, run):
    out = tmp_path / "out"
    assert run(*train_args(data, out, "--run-name", "r1", "--epochs", 1)).exit_code == 0
    unnamed = run(*train_args(data, out, "--epochs", 2, "--resume"))
    assert unnamed.exit_code == 1 and f"checkpoint_{DATA}.pth.tar" in unnamed.output
    resumed = run(*train_args(data, out, "--run-name", "r1", "--epochs", 2, "--resume"))
    assert resumed.exit_code == 0, resumed.output
    assert load_checkpoint(str(out / "checkpoint_r1.pth.tar"))["epoch"] == 2
    assert json.loads((out / "config_r1.json").read_text())["resumed"] is True
    assert [r.epochs_done for r in list_runs(str(out))] == [2]
    # among several data sets, the saved configuration names the run's data
    for path in data.glob(f"*{DATA}*"):
        shutil.copy(path, out / path.name.replace(DATA, "copy_5_1"))
    for path in data.glob(f"*{DATA}*"):
        shutil.copy(path, out / path.name)
    shutil.copytree(data / "shapes", out / "shapes", ignore=shutil.ignore_patterns("images"))  # what it drew
    again = run(*train_args(out, out, "--run-name", "r1", "--epochs", 3, "--resume"))
    assert again.exit_code == 0, again.output
    assert load_checkpoint(str(out / "checkpoint_r1.pth.tar"))["epoch"] == 3
    several = run(*train_args(out, out, "--epochs", 3, "--resume"))
    assert several.exit_code == 1 and "several prepared data sets" in several.output


def test_a2c_takes_the_trained_runs_name_or_its_own(trained_run, tmp_path, run):
    data, trained = trained_run
    out = tmp_path / "out"
    shutil.copytree(trained, out)
    os.rename(out / f"BEST_{DATA}.pth.tar", out / "BEST_base.pth.tar")
    args = ("--checkpoint", out / "BEST_base.pth.tar", "--data-folder", data, "--output-folder", out,
            "--batch-size", 8, "--precision", "fp32", "--max-len", 8, "--epochs", 1)
    result = run("a2c", *args, "--run-name", "rl")
    assert result.exit_code == 0, result.output
    for file in ("A2C_rl.pth.tar", "BEST_A2C_rl.pth.tar", "metrics_rl.jsonl", "config_A2C_rl.json"):
        assert (out / file).exists(), file
    assert load_checkpoint(str(out / "A2C_rl.pth.tar"))["run"] == "rl"
    lines = read_feed(str(out / "metrics_rl.jsonl"))
    steps = [line for line in lines if line["event"] == "step"]
    assert steps and all(line["images_per_s"] > 0 and line["pairs_per_s"] == line["images_per_s"] for line in steps)
    assert all(isinstance(line["reward"], float) for line in steps)
    val = [line for line in lines if line.get("split") == "val"]
    assert len(samples_of(val[-1])) == 3
    config = json.loads((out / "config_A2C_rl.json").read_text())
    assert config["stage"] == "a2c" and config["a2c_config"]["run_name"] == "rl"
    [info] = [r for r in list_runs(str(out)) if r.name == "rl"]
    assert (info.stage, info.epochs_done, info.epochs_total, info.state) == ("a2c", 1, 1, "finished")
    assert info.best_bleu4 == val[-1]["bleu4"]


# --- TensorBoard --------------------------------------------------------------------------------


def test_tensorboard_events_hold_the_feeds_scalars_and_samples(data, tmp_path, run):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "out"
    result = run(*train_args(data, out, "--run-name", "tb", "--epochs", 2, "--tensorboard"))
    assert result.exit_code == 0, result.output
    events = EventAccumulator(str(out / "tensorboard" / "tb"), size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()
    scalars = events.Tags()["scalars"]
    for tag in ("train/val/bleu4", "train/val/cider_d", "train/val/loss", "train/train/loss", "train/step/loss",
                "train/step/lr", "train/step/pairs_per_s", "train/step/data_wait"):
        assert tag in scalars, (tag, scalars)
    lines = read_feed(str(out / "metrics_tb.jsonl"))
    val = [line for line in lines if line.get("split") == "val" and line["event"] == "epoch"]
    written = [(e.step, e.value) for e in events.Scalars("train/val/bleu4")]
    assert written == [(line["step"], pytest.approx(line["bleu4"], rel=1e-6, abs=1e-30)) for line in val]
    steps = [line for line in lines if line["event"] == "step"]
    assert [e.step for e in events.Scalars("train/step/loss")] == [line["step"] for line in steps]
    assert [e.value for e in events.Scalars("train/step/loss")] == pytest.approx([line["loss"] for line in steps])
    assert "train/val/samples/text_summary" in events.Tags()["tensors"]
    text = events.Tensors("train/val/samples/text_summary")[-1].tensor_proto.string_val[0].decode()
    assert samples_of(val[-1])[0]["generated"] in text and samples_of(val[-1])[0]["image"] in text


def test_tensorboard_missing_says_how_to_get_it_and_writes_nothing(data, tmp_path, run, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails as if not installed
    out = tmp_path / "out"
    result = run(*train_args(data, out, "--epochs", 1, "--tensorboard"))
    assert result.exit_code == 1
    assert result.output.strip().count("\n") == 0 and "pip install 'capcli[tensorboard]'" in result.output
    assert not out.exists()
