"""Dashboard 2.0 with App.run_test() at 80 × 24 and 160 × 45: the two layouts, switching and
comparing runs, a crashed run, the step-loss chart, sample captions, b/c captioning again and
checkpoint rows from the metadata sidecar; the messages from a worker thread to the panels and
an error in a panel; and `capcli dashboard` in a pseudo-terminal."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time

import pytest
from textual_plotext import PlotextPlot

from capcli.dashboard.app import Dashboard
from capcli.dashboard.crash import ERROR_LOG
from capcli.dashboard.messages import RunsListed
from capcli.dashboard.runlist import RunsScreen
from capcli.paths import feed_file, lock_file
from tests.test_dashboard import _text, _until
from tests.test_terminal import run_in_terminal

NARROW, WIDE = (80, 24), (160, 45)
NAME = "shapes_5_1"
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def _feed(folder, name, epochs=2, total=6, bleu=0.1, end=None, samples=None, step_fields=None, start=None):
    """Write run ``name``'s feed: a start line, 4 step lines and a train and val line per epoch."""
    t0 = time.time() - 60 if start is None else start
    lines = [{"time": t0, "stage": "train", "event": "start", "epoch": 0, "step": 0, "epochs": total,
              "run": name, "data": "shapes_5_1"}]
    for epoch in range(1, epochs + 1):
        for i in range(4):
            step = (epoch - 1) * 4 + i + 1
            lines.append({"time": t0 + step, "stage": "train", "event": "step", "split": "train", "epoch": epoch,
                          "step": step, "loss": 4.0 - step / 10, "top5": 50.0, "lr": 1e-3, **(step_fields or {})})
        at = t0 + epoch * 10
        lines.append({"time": at, "stage": "train", "event": "epoch", "split": "train", "epoch": epoch,
                      "step": epoch * 4, "loss": 3.5 - epoch / 10, "top5": 60.0 + epoch, "lr": 1e-3})
        lines.append({"time": at, "stage": "train", "event": "epoch", "split": "val", "epoch": epoch,
                      "step": epoch * 4, "loss": 3.4 - epoch / 10, "top5": 61.0, "lr": 1e-3,
                      "bleu4": bleu * epoch, "cider_d": 0.5 * epoch, "improved": True,
                      **({"samples": samples} if samples is not None else {})})
    if end:
        lines.append({"time": t0 + epochs * 10 + 1, "stage": "train", "event": "end", "epoch": epochs,
                      "step": epochs * 4, "reason": end})
    os.makedirs(folder, exist_ok=True)
    with open(feed_file(str(folder), name), "w") as f:
        f.writelines(json.dumps(line) + "\n" for line in lines)


def _lock(folder, name, pid):
    with open(lock_file(str(folder), name), "w") as f:
        json.dump({"pid": pid, "host": socket.gethostname(), "started": time.time()}, f)


def _shown(app, selector) -> bool:
    widget = app.query_one(selector)
    return widget.display and widget.region.width > 0 and widget.region.height > 0


def _charts(app) -> list:
    return [w for w in app.query(PlotextPlot) if w.display and w.region.area > 0]


def _app(folder, name=None, **kwargs):
    return Dashboard(str(folder), name, poll_seconds=0.1, checkpoint_seconds=0.3, state_seconds=0.2, **kwargs)


@pytest.fixture
def run_copy(trained_run, tmp_path):
    data, out = trained_run
    shutil.copytree(out, tmp_path / "run")
    return data, tmp_path / "run"


def test_layouts_at_80x24_and_160x45(run_copy):
    data, folder = run_copy
    image = str(data / "shapes" / "images" / "shapes_000000.jpg")
    heat_sizes = {}

    async def scenario(size):
        app = _app(folder, NAME)
        async with app.run_test(size=size) as pilot:
            assert await _until(pilot, lambda: "epoch 1" in _text(app, "#run") and app.caption_query.chosen, 10)
            for selector in ("#run", "#checkpoints", "#chart", "#query", "#path", "#caption", "#heatmap"):
                region = app.query_one(selector).region
                assert region.width > 0 and region.right <= size[0] and region.bottom <= size[1], selector
            await pilot.press("i")
            app.query_one("#path").value = image
            await pilot.press("enter", "escape")
            assert await _until(pilot, lambda: app.caption_query.caption_result is not None, 30)
            await pilot.pause(0.2)
            heat = str(app.query_one("#heatmap").render()).splitlines()
            heat_sizes[size] = (max(map(len, heat)), len(heat))
            rows = _text(app, "#checkpoints")
            titles = [w.border_title for w in _charts(app)]
            return titles, rows, len(_charts(app)), {s: _shown(app, s) for s in ("#runs", "#samples", "#chart2")}

    titles, rows, charts, shown = asyncio.run(scenario(NARROW))
    assert charts == 1 and shown == {"#runs": False, "#samples": False, "#chart2": False}
    assert titles == ["Chart 1/6: Loss per step"]  # one epoch: the loss per step until there are two
    assert f"checkpoint_{NAME}" not in rows and "checkpoint_shapes…" in rows  # cut to fit 36 columns
    titles, rows, charts, shown = asyncio.run(scenario(WIDE))
    assert charts == 4 and all(shown.values())
    assert f"checkpoint_{NAME}" in rows and f"BEST_{NAME}" in rows  # whole names when there is room
    assert titles[0] == "Loss" and "CIDEr-D" in titles[1] and titles[2] == "Loss per step"
    (w80, h80), (w160, h160) = heat_sizes[NARROW], heat_sizes[WIDE]
    assert w160 > w80 and h160 > h80 and w160 * h160 >= 3 * w80 * h80  # the heat map grows with the panel


def test_switch_runs_and_overlay_validation_curves(tmp_path):
    _feed(tmp_path, "run_a", epochs=3, bleu=0.1, end="completed")
    _feed(tmp_path, "run_b", epochs=2, bleu=0.2)

    async def scenario():
        app = _app(tmp_path, "run_a")
        async with app.run_test(size=WIDE) as pilot:
            assert await _until(pilot, lambda: "run_a" in _text(app, "#run") and len(app.runs_panel.runs) == 2)
            assert "run_b" in _text(app, "#runs")
            await pilot.press("l")
            assert isinstance(app.screen, RunsScreen)
            await pilot.press("down", "enter")  # the run list is by name: run_b is second
            assert await _until(pilot, lambda: app.main.name == "run_b" and app.main.summary.epochs_done == 2)
            assert "run_b" in _text(app, "#run") and "0.4000" in _text(app, "#run")
            assert len(app.main.summary.series["bleu4"]) == 2
            await pilot.press("l", "up", "m")  # compare with run_a
            assert await _until(pilot, lambda: app.compared is not None and app.compared.summary.epochs_done == 3)
            assert app.compared.name == "run_a" and "vs run_a" in _text(app, "#run")
            scores = _charts(app)[1]
            assert await _until(pilot, lambda: "run_a" in str(scores.render()))  # the legend names it
            assert [len(f.summary.series["bleu4"]) for f in (app.compared, app.main)] == [3, 2]
            await pilot.press("l", "up", "m")  # m on the compared run: stop comparing
            assert await _until(pilot, lambda: app.compared is None)
            assert "run_a" not in str(scores.render())

    asyncio.run(scenario())


def test_crashed_run_is_shown_crashed_within_10_s(tmp_path):
    _feed(tmp_path, NAME, epochs=2, total=6, start=time.time() - 25)
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    _lock(tmp_path, NAME, child.pid)

    async def scenario():
        app = _app(tmp_path, NAME)
        async with app.run_test(size=NARROW) as pilot:
            assert await _until(pilot, lambda: "running" in _text(app, "#run"))
            assert "ETA 40s" in _text(app, "#run")  # 4 epochs left × 10 s
            child.kill()
            child.wait()
            killed = time.monotonic()
            assert await _until(pilot, lambda: "CRASHED" in _text(app, "#run"), 10)
            assert time.monotonic() - killed < 10
            text = _text(app, "#run")
            assert "running" not in text and "live" not in text and "ETA —" in text

    try:
        asyncio.run(scenario())
    finally:
        child.kill()


def test_step_loss_chart_stays_after_two_epochs(tmp_path):
    _feed(tmp_path, NAME, epochs=2)

    async def scenario(size):
        app = _app(tmp_path, NAME)
        async with app.run_test(size=size) as pilot:
            assert await _until(pilot, lambda: app.main is not None and app.main.summary.epochs_done == 2)
            if size == NARROW:
                assert app.query_one("#chart").border_title.endswith("Loss")  # two epochs: loss per epoch
                await pilot.press("6")
                chart = app.query_one("#chart")
                assert chart.border_title == "Chart 6/6: Loss per step"
            else:
                chart = _charts(app)[2]
                assert chart.border_title == "Loss per step"
            assert "no data yet" not in str(chart.render()) and "step" in str(chart.render())
            assert len(app.main.summary.series["step_loss"]) == 8

    asyncio.run(scenario(NARROW))
    asyncio.run(scenario(WIDE))


def test_sample_captions_of_the_last_epoch(tmp_path):
    samples = [{"image": "shapes_000017.jpg", "generated": "a red circle", "references": ["a red square"]},
               {"image": "shapes_000018.jpg", "generated": "two blue triangles", "references": ["two blue ones"]}]
    _feed(tmp_path, NAME, epochs=2, samples=samples,
          step_fields={"pairs_per_s": 812.5, "images_per_s": 162.5, "data_wait": 0.25, "mem_mb": None})

    async def scenario(size):
        app = _app(tmp_path, NAME)
        async with app.run_test(size=size) as pilot:
            assert await _until(pilot, lambda: "red circle" in _text(app, "#samples"))
            text = _text(app, "#samples")
            assert "epoch 2" in text and "shapes_000018.jpg" in text and "a red square" in text
            run = _text(app, "#run")
            assert "162 img/s" in run and "812 pairs/s" in run and "25%" in run
            assert "GPU mem —  peak —" in run  # CPU runs write null; old feeds have no such field
            if size == NARROW:
                assert not _shown(app, "#samples")
                await pilot.press("s")
                await pilot.pause(0.1)
                assert _shown(app, "#samples") and not _charts(app)
                await pilot.press("1")  # a chart key brings the chart back
                await pilot.pause(0.1)
                assert len(_charts(app)) == 1 and not _shown(app, "#samples")
            else:
                assert _shown(app, "#samples") and len(_charts(app)) == 4

    asyncio.run(scenario(NARROW))
    asyncio.run(scenario(WIDE))


def test_b_and_c_caption_again(run_copy):
    data, folder = run_copy
    image = str(data / "shapes" / "images" / "shapes_000001.jpg")

    async def scenario():
        app = _app(folder, NAME)
        async with app.run_test(size=NARROW) as pilot:
            query = app.caption_query
            assert await _until(pilot, lambda: len(query.paths) == 2, 10)
            await pilot.press("b")  # no image asked about yet: nothing to caption again
            assert query.caption_for is None and query.beam == 5
            await pilot.press("i")
            app.query_one("#path").value = image
            await pilot.press("enter", "escape")
            assert await _until(pilot, lambda: query.caption_for == (image, query.chosen, 5), 30)
            await pilot.press("b")
            assert await _until(pilot, lambda: query.caption_for == (image, query.chosen, 10), 30)
            first = query.chosen
            await pilot.press("c")
            assert query.chosen != first
            assert await _until(pilot, lambda: query.caption_for == (image, query.chosen, 10), 30)
            assert query.caption_result.words and query.caption_result.words[0] in _text(app, "#caption")

    asyncio.run(scenario())


def test_dashboard_with_two_runs_in_a_terminal(tmp_path):
    _feed(tmp_path, "run_a", epochs=2, end="completed")
    _feed(tmp_path, "run_b", epochs=1)
    os.utime(feed_file(str(tmp_path), "run_a"), (time.time() - 100, time.time() - 100))
    rc, output = run_in_terminal("dashboard", "--output-folder", tmp_path, cwd=tmp_path, timeout=90, keys=b"q")
    assert rc == 0 and "Traceback" not in output, output
    assert "run_b" in output and "CRASHED" in output  # the newest feed; no lock, no end line


def test_checkpoint_rows_from_the_sidecar_without_loading(run_copy, monkeypatch):
    import capcli.store.checkpoint
    from capcli.paths import checkpoint_meta_file
    from capcli.store.sidecar import read_meta

    _, folder = run_copy
    best, latest = folder / f"BEST_{NAME}.pth.tar", folder / f"checkpoint_{NAME}.pth.tar"
    meta = read_meta(str(best))
    assert meta is not None and read_meta(str(latest)) is not None
    real_load, loads = capcli.store.checkpoint.load_checkpoint, []

    def counting_load(path):
        loads.append(os.path.basename(path))
        if sidecars_only:
            raise AssertionError(f"{path} loaded whole although its sidecar exists")
        return real_load(path)

    sidecars_only = True
    monkeypatch.setattr(capcli.store.checkpoint, "load_checkpoint", counting_load)

    async def scenario():
        nonlocal sidecars_only
        app = _app(folder, NAME)
        async with app.run_test(size=WIDE) as pilot:
            panel = app.checkpoint_list
            assert await _until(pilot, lambda: len(panel.checkpoints) == 2, 10)
            assert all(c.from_sidecar for c in panel.checkpoints.values()) and loads == []
            row = next(r for r in _text(app, "#checkpoints").splitlines() if f"BEST_{NAME}" in r)
            assert f"e{meta['epoch']}" in row and f"{meta['best_bleu4']:.3f}" in row
            assert f"{meta['best_cider_d']:.3f}" in row  # the wide panel has room for CIDEr-D
            assert not app._notifications
            sidecars_only = False
            os.remove(checkpoint_meta_file(str(latest)))  # a checkpoint from before sidecars: loaded
            os.utime(latest)
            await pilot.press("r")
            assert await _until(pilot, lambda: loads == [latest.name], 10)
            assert await _until(pilot, lambda: not panel.checkpoints[str(latest)].from_sidecar, 10)
            assert panel.checkpoints[str(latest)].epoch == 1 and f"checkpoint_{NAME}" in _text(app, "#checkpoints")

    asyncio.run(scenario())


def test_a_listing_posted_from_a_thread_reaches_the_followed_run_and_both_panels(tmp_path):
    _feed(tmp_path, "run_a", epochs=2, end="completed")
    _feed(tmp_path, "run_b", epochs=1, end="completed")

    async def scenario():
        app = Dashboard(str(tmp_path), "run_a", poll_seconds=0.1, checkpoint_seconds=5, state_seconds=60)
        async with app.run_test(size=WIDE) as pilot:
            assert await _until(pilot, lambda: "finished" in _text(app, "#run") and len(app.runs_panel.runs) == 2)
            runs = [dataclasses.replace(r, state="stopped") if r.name == "run_a" else r for r in app.runs_panel.runs]
            # as the state worker does: post_message from another thread, the app applies it and passes it on
            poster = threading.Thread(target=app.post_message, args=(RunsListed(runs, {"run_a": "stopped"}),))
            poster.start()
            poster.join()
            assert await _until(pilot, lambda: "stopped" in _text(app, "#run"))
            assert app.main.state == "stopped" and app.runs_panel.runs == runs
            assert await _until(pilot, lambda: "stopped" in _text(app, "#runs"))
            rows = _text(app, "#runs").splitlines()
            assert "run_a  stopped" in rows[0] and "run_b  finished" in rows[1]

    asyncio.run(scenario())


def test_an_error_in_a_panel_exits_1_with_a_log_and_one_line(tmp_path, monkeypatch, capsys):
    _feed(tmp_path, NAME, epochs=1)

    def broken(*args):
        raise KeyError("no such row")

    monkeypatch.setattr("capcli.dashboard.views.run_row", broken)  # the run list panel draws its rows with it
    app = _app(tmp_path, NAME)

    async def scenario():
        with pytest.raises(KeyError):  # run_test raises the error again, as Textual does for tests
            async with app.run_test(size=WIDE) as pilot:
                assert await _until(pilot, lambda: not app.is_running, 10)

    asyncio.run(scenario())
    assert app.return_code == 1
    assert app.error_message == (f"the dashboard stopped on an unexpected error: KeyError: 'no such row' "
                                 f"(traceback in {tmp_path / ERROR_LOG})")
    text = (tmp_path / ERROR_LOG).read_text()
    assert "Traceback (most recent call last)" in text and "in on_runs_listed" in text
    assert "Traceback" not in capsys.readouterr().err  # the log has it: Textual does not print it too
