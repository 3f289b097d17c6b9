"""Hostile metrics feeds: lines that are not JSON objects, have wrong-typed fields or bytes that
are not UTF-8 are skipped and counted by every reader (``capcli metrics``, ``read_feed``,
``FeedTail``, ``summarize``, ``truncate_after``, the dashboard); the feed and the PNGs are never
written through a planted symlink; an unexpected dashboard error ends it with return code 1 and
its traceback in a log file."""

from __future__ import annotations

import asyncio
import json
import os

import pytest
from textual.worker import WorkerFailed

from capcli.dashboard.app import Dashboard
from capcli.dashboard.crash import ERROR_LOG
from capcli.errors import CapcliError
from capcli.runs.feed import FIELDS, MetricsFeed, read_feed, scan_feed
from capcli.runs.summary import FeedTail, summarize

NAME = "hostile_5_1"


def _line(event, time, split=None, epoch=None, step=None, **values) -> dict:
    """A line exactly as ``MetricsFeed.write`` of a training run writes it."""
    return {**dict.fromkeys(FIELDS), "time": time, "stage": "train", "event": event, "split": split,
            "epoch": epoch, "step": step, **values}


GOOD = [
    _line("start", 1000.0, epoch=0, step=0, epochs=2),
    _line("step", 1005.0, "train", 1, 5, loss=3.0, top5=40.0, lr=4e-4),
    _line("epoch", 1010.0, "train", 1, 10, loss=2.5, top5=45.0, lr=4e-4),
    _line("epoch", 1012.0, "val", 1, 10, loss=2.7, top5=44.0, bleu4=0.12, lr=4e-4, best_bleu4=0.12, improved=True),
    _line("epoch", 1028.0, "train", 2, 20, loss=2.0, top5=50.0, lr=2e-4),
    _line("epoch", 1030.0, "val", 2, 20, loss=2.4, top5=48.0, bleu4=0.2, lr=2e-4, best_bleu4=0.2, improved=True),
    _line("end", 1031.0, epoch=2, step=20, reason="completed", bleu4=0.2),
]
_VAL = GOOD[3]
# each would change the figures if it were read (best BLEU-4 0.9x, epoch 7, …) or crash a reader
HOSTILE = [
    b"[1]", b"null", b"3", b'"x"', b"{oops", b"[" * 100_000,
    json.dumps({**_VAL, "epoch": "two", "bleu4": 0.99}).encode(),
    json.dumps({**GOOD[2], "loss": "x"}).encode(),
    json.dumps({**GOOD[1], "step": [1], "loss": 9.0}).encode(),
    json.dumps({**_VAL, "stage": 5, "bleu4": 0.98}).encode(),
    json.dumps({**_VAL, "time": "yesterday", "bleu4": 0.97}).encode(),
    json.dumps({**GOOD[0], "epochs": {}}).encode(),
    json.dumps({**_VAL, "epoch": True, "bleu4": 0.96}).encode(),
    json.dumps({**_VAL, "epoch": 10**30}).encode(),
    json.dumps({**_VAL, "improved": "yes", "bleu4": 0.95}).encode(),
    json.dumps({**_VAL, "bleu4": 1e300}).encode(),
    json.dumps({**GOOD[-1], "reason": 7}).encode(),
    json.dumps({**_VAL, "bleu4": 0.94, "note": "\udcff"}, ensure_ascii=False).encode("utf-8", "surrogateescape"),
]


def _feed_bytes(partial: bytes = b"") -> bytes:
    """The good lines in order with a hostile line after each (all of them by the end)."""
    out, hostile = [], list(HOSTILE)
    for line in GOOD:
        out.append(json.dumps(line).encode())
        share = -(-len(HOSTILE) // len(GOOD))
        out.extend(hostile[:share])
        del hostile[:share]
    return b"\n".join(out) + b"\n" + partial


def _write_feed(folder, partial: bytes = b"") -> str:
    folder.mkdir(exist_ok=True)
    path = folder / f"metrics_{NAME}.jsonl"
    path.write_bytes(_feed_bytes(partial))
    return str(path)


def _check_figures(s) -> None:
    assert s.lines == len(GOOD) and s.skipped == len(HOSTILE)
    assert s.epochs_done == 2 and s.total_epochs == {"train": 2} and s.last_step == 20
    assert (s.best_bleu4, s.best_epoch) == (0.2, 2)
    assert s.last == {"train_loss": 2.0, "train_top5": 50.0, "val_loss": 2.4, "val_top5": 48.0, "lr": 2e-4}
    assert s.mean_epoch_seconds == pytest.approx(15.0)  # (1012 - 1000 + 1030 - 1012) / 2
    assert s.lr_changes == [(2, 2e-4)] and s.ended == "completed"
    assert s.series["step_loss"] == [(5, 3.0)] and s.series["bleu4"] == [(1, 0.12), (2, 0.2)]


def test_metrics_command_skips_and_counts_hostile_lines(tmp_path, run):
    _write_feed(tmp_path / "run", partial=b'{"time": 1040.0, "stage": "tr')
    result = run("metrics", "--output-folder", tmp_path / "run")
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert f"{len(GOOD)} lines, ended (completed)" in out
    assert "2 of 2  (last step 20)" in out and "0.2000 at epoch 2" in out
    assert "2.0000 / 50.00 %" in out and "2.4000 / 48.00 %" in out and "15.0 s" in out
    assert "changed at epoch 2 → 2.00e-04" in out
    skipped = [row for row in out.splitlines() if row.startswith("skipped lines")]
    assert len(skipped) == 1 and f"  {len(HOSTILE)} (" in skipped[0]  # the half-written last line is not counted
    assert "Loss" in out and "Validation BLEU-4" in out  # the charts were drawn
    clean = tmp_path / "clean"
    clean.mkdir()
    (clean / f"metrics_{NAME}.jsonl").write_text("".join(json.dumps(x) + "\n" for x in GOOD))
    result = run("metrics", "--output-folder", clean, "--no-charts")
    assert result.exit_code == 0 and "skipped" not in result.output and "0.2000 at epoch 2" in result.output


def test_a_fifo_feed_hangs_neither_runs_nor_metrics(tmp_path):
    from tests.conftest import run_subprocess

    _write_feed(tmp_path)
    os.mkfifo(tmp_path / "metrics_fifo.jsonl")  # opened plainly, a FIFO blocks until a writer comes
    listing = run_subprocess("runs", "--output-folder", tmp_path)
    out, err = listing.communicate(timeout=60)
    assert listing.returncode == 0, err
    assert [row.split()[0] for row in out.splitlines()[1:]] == [NAME]  # a FIFO is no run's feed
    metrics = run_subprocess("metrics", "--output-folder", tmp_path, "--run-name", "fifo", "--no-charts")
    out, err = metrics.communicate(timeout=60)
    assert metrics.returncode == 1 and out == ""
    assert err.splitlines() == [f"Error: {tmp_path / 'metrics_fifo.jsonl'}: not a regular file (a FIFO, device or "
                                "folder); capcli reads only regular files here (remove it or give the file itself)"]


def test_read_feed_and_summarize(tmp_path):
    path = _write_feed(tmp_path, partial=b"[1")
    lines, skipped = scan_feed(path)
    assert lines == GOOD and skipped == len(HOSTILE)
    assert read_feed(path) == GOOD
    _check_figures(summarize(lines, skipped))
    loaded = []  # the same lines parsed by a caller that checks nothing
    for raw in HOSTILE:
        try:
            loaded.append(json.loads(raw))
        except (ValueError, RecursionError):
            continue
    mixed = [x for pair in zip(GOOD, loaded) for x in pair] + loaded[len(GOOD):]
    s = summarize(mixed, skipped=len(HOSTILE) - len(loaded))
    _check_figures(s)


def test_feed_tail_skips_and_counts(tmp_path):
    data = _feed_bytes()
    path = tmp_path / f"metrics_{NAME}.jsonl"
    tail = FeedTail(str(path))
    middle = data.index(HOSTILE[-1]) + 3  # inside the non-UTF-8 line: its bytes arrive in two reads
    path.write_bytes(data[:middle])
    first = tail.poll()
    with open(path, "ab") as f:
        f.write(data[middle:])
    second = tail.poll()
    assert first + second == GOOD and tail.skipped == len(HOSTILE)
    _check_figures(summarize(first + second, tail.skipped))
    path.write_bytes(json.dumps(GOOD[0]).encode() + b"\n[2]\n")  # shrank: start over, count again
    assert tail.poll() == [GOOD[0]] and tail.reset and tail.skipped == 1


def test_truncate_after_skips_hostile_lines_and_writes_no_fixed_temp(tmp_path):
    path = _write_feed(tmp_path)
    outside = tmp_path / "outside.txt"
    outside.write_text("keep me")
    os.symlink(outside, path + ".partial")  # the name the old rewrite wrote through
    assert MetricsFeed(path, "train").truncate_after(10) == len(HOSTILE)
    assert read_feed(path) == [x for x in GOOD if x["step"] <= 10]
    assert scan_feed(path)[1] == 0  # the rewrite holds valid lines only
    assert outside.read_text() == "keep me"
    assert sorted(os.listdir(tmp_path)) == ["metrics_hostile_5_1.jsonl", "outside.txt"]


def test_write_refuses_a_symlink_at_the_feed(tmp_path):
    outside = tmp_path / "elsewhere" / "victim.txt"
    outside.parent.mkdir()
    outside.write_text("keep me")
    feed_path = tmp_path / "run" / "metrics_X.jsonl"
    feed = MetricsFeed(str(feed_path), "train")
    os.symlink(outside, feed_path)
    with pytest.raises(CapcliError, match="symbolic link"):
        feed.write("start", epoch=0, step=0, epochs=1)
    assert outside.read_text() == "keep me"
    feed_path.unlink()
    line = feed.write("start", epoch=0, step=0, epochs=1)
    assert read_feed(str(feed_path)) == [line]


def test_save_png_never_writes_through_a_symlink(tmp_path, run):
    folder = tmp_path / "run"
    _write_feed(folder)
    stems = ("loss_plot", "accuracy_plot", "bleu_scores", "training_visualization")
    targets = {}
    for stem in stems:
        targets[stem] = tmp_path / f"victim_{stem}.txt"
        targets[stem].write_text("keep me")
        os.symlink(targets[stem], folder / f"{stem}_{NAME}.png")
    result = run("metrics", "--output-folder", folder, "--save-png", "--no-charts")
    assert result.exit_code == 0, result.output
    for stem in stems:
        png = folder / f"{stem}_{NAME}.png"
        assert not png.is_symlink() and png.read_bytes()[:4] == b"\x89PNG"
        assert targets[stem].read_text() == "keep me"
    assert not [n for n in os.listdir(folder) if n.endswith(".tmp")]


# --- the dashboard ------------------------------------------------------------------------------

async def _until(pilot, condition, seconds=5.0) -> bool:
    for _ in range(int(seconds / 0.05)):
        if condition():
            return True
        await pilot.pause(0.05)
    return condition()


def _text(app, selector) -> str:
    return str(app.query_one(selector).render())


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_dashboard_keeps_running_on_hostile_lines(tmp_path):
    feed = _write_feed(tmp_path)

    async def scenario():
        app = Dashboard(str(tmp_path), NAME, poll_seconds=0.1, checkpoint_seconds=5)
        async with app.run_test(size=(80, 24)) as pilot:
            assert await _until(pilot, lambda: "0.2000 e2" in _text(app, "#run") and "finished" in _text(app, "#run"))
            panel = _text(app, "#run")
            assert "epoch 2/2  step 20" in panel  # finished: no lock, and the end line says completed
            assert f"skipped {len(HOSTILE)} invalid feed line(s)" in panel
            _check_figures(app.main.summary)
            with open(feed, "ab") as f:  # more of them, and a reason that looks like markup
                f.write(b"null\n\xff\xfe\n" + json.dumps({**GOOD[-1], "reason": "[/b] [@click=app.quit]x"}).encode()
                        + b"\n")
            assert await _until(pilot, lambda: "stopped ([/b] [@click=app.quit]x)" in _text(app, "#run"))
            assert f"skipped {len(HOSTILE) + 2} invalid" in _text(app, "#run")
            assert app.is_running and app.error_message is None

    asyncio.run(scenario())
    assert not os.path.exists(tmp_path / ERROR_LOG)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("folder_exists", [True, False])
def test_dashboard_error_in_the_poll_worker_exits_1_with_a_log(tmp_path, monkeypatch, folder_exists):
    folder = tmp_path / "run"
    if folder_exists:
        _write_feed(folder)
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))  # where the log goes without the run folder

    def broken(self):
        raise RuntimeError("boom\nsecond line")

    monkeypatch.setattr(FeedTail, "chunks", broken)

    app = Dashboard(str(folder), NAME, poll_seconds=0.1, checkpoint_seconds=5)

    async def scenario():
        with pytest.raises(WorkerFailed):  # run_test re-raises the error, as Textual does for tests
            async with app.run_test(size=(80, 24)) as pilot:
                assert await _until(pilot, lambda: not app.is_running)

    asyncio.run(scenario())
    assert app.return_code == 1
    message = app.error_message
    assert "\n" not in message and "RuntimeError: boom (traceback in " in message
    log = message.rsplit("traceback in ", 1)[1].rstrip(")")
    if folder_exists:
        assert log == str(folder / ERROR_LOG)
    else:
        assert os.path.dirname(log) == str(tmp_path) and log.endswith(".log")
    text = open(log).read()
    assert "Traceback (most recent call last)" in text and "in poll_feed" in text and "boom" in text
    app.exit()  # a later plain exit does not turn the error into success
    assert app.return_code == 1


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_dashboard_error_in_a_key_handler_exits_1_with_a_log(tmp_path, monkeypatch):
    _write_feed(tmp_path)

    def broken(self):
        raise ValueError("bad beam")

    monkeypatch.setattr(Dashboard, "action_beam", broken)

    app = Dashboard(str(tmp_path), NAME, poll_seconds=0.1, checkpoint_seconds=5)

    async def scenario():
        with pytest.raises(ValueError, match="bad beam"):
            async with app.run_test(size=(80, 24)) as pilot:
                assert await _until(pilot, lambda: "0.2000" in _text(app, "#run"))
                await pilot.press("b")
                assert await _until(pilot, lambda: not app.is_running)

    asyncio.run(scenario())
    assert app.return_code == 1 and "ValueError: bad beam" in app.error_message
    text = (tmp_path / ERROR_LOG).read_text()
    assert "Traceback (most recent call last)" in text and "ValueError: bad beam" in text
