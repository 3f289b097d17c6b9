"""The dashboard with App.run_test(): a live feed, truncation, a missing file, caption queries,
the 80 × 24 layout and every key in the help screen (test_dashboard_layout.py: the wide layout,
runs, samples)."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import time

import pytest
import torch

from capcli.dashboard.app import Dashboard
from capcli.dashboard.charts import downsample
from capcli.dashboard.widgets import HELP, HelpScreen
from capcli.paths import lock_file
from capcli.runs.summary import FeedTail

NAME = "shapes_5_1"


def _line(epoch, split="val", event="epoch", bleu=0.1, loss=2.0, step=None):
    return {"time": time.time(), "stage": "train", "event": event, "split": split, "epoch": epoch,
            "step": step if step is not None else epoch * 10, "loss": loss, "top5": 50.0 + epoch,
            "bleu4": bleu if split == "val" else None, "lr": 4e-4}


def _append(path, *lines, partial: str = ""):
    with open(path, "a") as f:
        for line in lines:
            f.write(json.dumps(line) + "\n")
        f.write(partial)


async def _until(pilot, condition, seconds=3.0):
    """Wait (as the user would) until ``condition()`` holds; fails after ``seconds``."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        await pilot.pause(0.05)
        if condition():
            return True
    return condition()


def _text(app, selector):
    return str(app.query_one(selector).render())


def _colours(content) -> str:
    """The colours of a rendered heat map, cell by cell."""
    return " ".join(str(span.style) for span in content.spans)


def test_feed_tail_partial_truncation_and_missing(tmp_path):
    path = tmp_path / "metrics_x.jsonl"
    tail = FeedTail(str(path))
    assert tail.poll() == [] and not tail.exists
    second = json.dumps(_line(2))
    _append(path, _line(1), partial=second[:12])
    assert [x["epoch"] for x in tail.poll()] == [1]  # the half-written line waits
    assert tail.poll() == []
    with open(path, "a") as f:
        f.write(second[12:] + "\n")
    assert [x["epoch"] for x in tail.poll()] == [2]
    path.write_text(json.dumps(_line(7)) + "\n")  # shrank (a new run): start over
    assert [x["epoch"] for x in tail.poll()] == [7] and tail.reset
    path.unlink()
    assert tail.poll() == [] and not tail.exists


def test_downsample_keeps_ends():
    points = [(i, i * 2) for i in range(5000)]
    small = downsample(points, 100)
    assert len(small) == 100 and small[0] == points[0] and small[-1] == points[-1]


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_live_feed_truncation_and_waiting(tmp_path):
    async def scenario():
        app = Dashboard(str(tmp_path), NAME, poll_seconds=0.1, checkpoint_seconds=0.5, state_seconds=0.2)
        feed = tmp_path / f"metrics_{NAME}.jsonl"
        with open(lock_file(str(tmp_path), NAME), "w") as f:  # held by a live process (this one): running
            json.dump({"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}, f)
        async with app.run_test(size=(80, 24)) as pilot:
            await pilot.pause(0.2)
            assert "waiting" in _text(app, "#run")  # no file yet
            start = {**_line(0, None, "start", step=0), "time": time.time() - 100, "epochs": 5}
            _append(feed, start, _line(1, "train"), _line(1, bleu=0.21))
            assert await _until(pilot, lambda: "epoch 1/5" in _text(app, "#run"))  # total from the start line
            assert "0.2100" in _text(app, "#run")
            assert await _until(pilot, lambda: "running" in _text(app, "#run"))
            assert "ETA 7m" in _text(app, "#run")  # 4 epochs left × 100 s, with no checkpoint yet
            started = time.monotonic()
            _append(feed, _line(2, "train"), _line(2, bleu=0.35), partial=json.dumps(_line(3, bleu=0.9))[:30])
            assert await _until(pilot, lambda: "epoch 2" in _text(app, "#run"))
            assert time.monotonic() - started < 2.0
            assert "0.3500" in _text(app, "#run")  # the half-written epoch 3 is not used
            assert len(app.main.summary.series["val_loss"]) == 2
            await pilot.pause(0.3)
            assert "epoch 2" in _text(app, "#run")
            with open(feed, "a") as f:  # the writer completes the line
                f.write(json.dumps(_line(3, bleu=0.9))[30:] + "\n")
            assert await _until(pilot, lambda: "epoch 3" in _text(app, "#run"))
            assert len(app.main.summary.series["bleu4"]) == 3
            _append(feed, {**_line(3, None, "start", step=30), "stage": "a2c", "epochs": 2})
            assert await _until(pilot, lambda: "epoch 0/2" in _text(app, "#run"))  # a2c's own epochs, not training's
            feed.write_text(json.dumps(_line(1, bleu=0.05)) + "\n")  # truncated by a new run
            assert await _until(pilot, lambda: "0.0500" in _text(app, "#run"))
            assert len(app.main.summary.series["bleu4"]) == 1
            feed.unlink()
            assert await _until(pilot, lambda: "waiting" in _text(app, "#run"))

    asyncio.run(scenario())


@pytest.fixture
def run_copy(trained_run, tmp_path):
    """(data folder, a copy of the trained run's folder the test may change)."""
    data, out = trained_run
    shutil.copytree(out, tmp_path / "run")
    return data, tmp_path / "run"


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_caption_query_heat_map_and_errors(run_copy, tmp_path):
    data, folder = run_copy
    image = str(data / "shapes" / "images" / "shapes_000000.jpg")
    bad = tmp_path / "bad.jpg"
    bad.write_text("not an image")

    async def scenario():
        app = Dashboard(str(folder), NAME, poll_seconds=0.1, checkpoint_seconds=0.5)
        async with app.run_test(size=(80, 24)) as pilot:
            query = app.caption_query  # the caption panel: its settings, the answer shown
            assert await _until(pilot, lambda: bool(query.paths), 10)  # the checkpoints, as the panel has them
            assert f"BEST_{NAME}" in _text(app, "#settings")
            await pilot.press("i")
            app.query_one("#path").value = str(bad)
            await pilot.press("enter")
            assert await _until(pilot, lambda: "failed" in _text(app, "#caption"), 20)
            assert any("bad.jpg" in str(n.message) for n in app._notifications)
            path_box = app.query_one("#path")
            assert app.focused is path_box  # a failed query: back in the box to correct the path
            path_box.value = image[:-6]  # ".../shapes_0000": Tab completes to the first match
            assert await _until(pilot, lambda: bool(path_box._suggestion), 5)
            await pilot.press("tab")
            assert path_box.value == image
            await pilot.press("enter")
            assert await _until(pilot, lambda: query.caption_result is not None, 30)
            result = query.caption_result
            words = result.words
            assert words and result.caption.split()[0] in _text(app, "#caption")
            first = app.query_one("#heatmap").render()
            assert "▀" in str(first)
            # resnet18 leaves the fixture's 32-pixel images one feature cell, so every word's attention is
            # the same uniform map: give each word a peak of its own to see the map follow the word
            cells = result.attention.shape[1]
            peaks = torch.ones_like(result.attention)
            peaks[torch.arange(len(words)), torch.arange(len(words)) * 7 % cells] = 50.0
            result.attention = peaks / peaks.sum(dim=1, keepdim=True)
            assert app.focused is None  # a caption shown: the keys are the app's, no escape needed
            await pilot.press("right")
            assert query.word_index == 1 % len(words)
            shown = [1 % len(words)]
            maps = {_colours(app.query_one("#heatmap").render())}
            for _ in range(min(len(words), 8) - 2):
                await pilot.press("right")
                shown.append(query.word_index)
                maps.add(_colours(app.query_one("#heatmap").render()))
            assert len(maps) == len(set(shown))  # other words, other maps
            await pilot.press("left", *["left"] * (query.word_index - 1))
            assert query.word_index == 0
            # a foreign checkpoint: an error notification, the app keeps working
            (folder / "foreign.pth.tar").write_text("junk")
            await pilot.press("r")
            assert await _until(pilot, lambda: any("foreign" in str(n.message) for n in app._notifications), 10)
            await pilot.press("b")
            assert query.beam == 5
            assert app.is_running

    asyncio.run(scenario())


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_layout_at_80x24_and_every_help_key(run_copy):
    data, folder = run_copy

    async def scenario():
        app = Dashboard(str(folder), NAME, poll_seconds=0.1, checkpoint_seconds=0.5)
        async with app.run_test(size=(80, 24)) as pilot:
            assert await _until(pilot, lambda: "epoch 1" in _text(app, "#run"), 5)
            query = app.caption_query
            for selector in ("#run", "#checkpoints", "#chart", "#query", "#path", "#caption", "#heatmap"):
                region = app.query_one(selector).region
                assert region.width > 0 and region.height > 0, selector
                assert region.right <= 80 and region.bottom <= 24, selector
            screen = app.export_screenshot()
            for title in ("Run", "Checkpoints", "Caption", "Chart"):
                assert title in screen
            # every key the help screen lists
            for key, expected in (("2", "Top-5"), ("3", "BLEU-4"), ("4", "A2C"), ("1", "Loss")):
                await pilot.press(key)
                assert app.charts.chart_key == key and expected in app.query_one("#chart").border_title
            await pilot.press("question_mark")
            assert isinstance(app.screen, HelpScreen)
            await pilot.press("escape")
            assert not isinstance(app.screen, HelpScreen)
            beam = query.beam
            await pilot.press("b")
            assert query.beam != beam
            chosen = query.chosen
            await pilot.press("c")
            # the run has 2 checkpoints
            assert query.chosen != chosen and query.chosen in app.checkpoint_list.checkpoints
            await pilot.press("r", "i")
            assert app.focused is app.query_one("#path")
            await pilot.press("escape")
            assert app.focused is None
            await pilot.press("left", "right", "q")
        assert not app.is_running

    for key in ("1 2 3 4", "i ", "enter", "escape", "← →", "b ", "c ", "r ", "?", "q "):
        assert key in HELP
    asyncio.run(scenario())


def test_dashboard_refuses_without_a_terminal(run):
    result = run("dashboard")
    assert result.exit_code == 1 and "needs an interactive terminal" in result.output
