"""Feeds at the scale of a COCO run (issue 27): 300,000 step lines. ``capcli runs`` and ``capcli
metrics`` give the right state, epochs and best scores without parsing every step line, chart series
stay bounded, ``runs`` and the dashboard agree on each run's state, and axis labels are readable.

``write_feed`` is also what docs/performance.md's measurement uses.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import time

import plotext
import pytest

from capcli.dashboard.app import Dashboard
from capcli.dashboard.charts import STEP_LOSS, VAL_SCORES, draw_chart
from capcli.paths import lock_file
from capcli.runs import feed
from capcli.runs.metrics import nice_ticks, terminal_charts
from capcli.runs.summary import MAX_STEP_BUCKETS, list_runs, read_summary, run_info, summarize
from tests.test_dashboard import _text, _until

STEPS, EPOCHS = 300_000, 30
BEST_EPOCH = 20  # its val line has BLEU-4 0.5; later epochs do worse

_STEP = (b'{"time": %.3f, "stage": "train", "event": "step", "split": "train", "epoch": %d, "step": %d, '
         b'"loss": %.4f, "top5": 55.5, "bleu4": null, "lr": 0.0004, "pairs_per_s": 900.5, "images_per_s": 180.1, '
         b'"data_wait": 0.05, "mem_mb": 2000.0, "peak_mem_mb": 2500.0}')


def _line(**fields) -> bytes:
    return json.dumps({**dict.fromkeys(feed.FIELDS), "stage": "train", **fields}).encode()


def _bleu(epoch: int) -> float:
    return 0.5 if epoch == BEST_EPOCH else 0.1 + epoch * 0.005


def write_feed(path: str, steps: int = STEPS, epochs: int = EPOCHS, end: str | None = "completed",
               t0: float | None = None, seconds_per_step: float = 0.01) -> None:
    """A feed as a long training run writes it, built fast (bytes formatted and joined): a start
    line, ``steps`` step lines, a train and a val line per epoch, an end line unless ``end`` is None."""
    t0 = time.time() - steps * seconds_per_step - 1 if t0 is None else t0
    per = steps // epochs
    out = [_line(time=t0, event="start", epoch=0, step=0, epochs=epochs, run="coco", data="coco_5_3")]
    step = 0
    for epoch in range(1, epochs + 1):
        out += [_STEP % (t0 + (step + i) * seconds_per_step, epoch, step + i, 4.0 - epoch * 0.05 + (i % 7) * 0.01)
                for i in range(1, per + 1)]
        step += per
        now = t0 + step * seconds_per_step
        out.append(_line(time=now, event="epoch", split="train", epoch=epoch, step=step, loss=3.0, top5=60.0, lr=4e-4))
        out.append(_line(time=now, event="epoch", split="val", epoch=epoch, step=step, loss=3.1, top5=58.0,
                         bleu4=_bleu(epoch), cider_d=3 * _bleu(epoch), lr=4e-4, improved=epoch <= BEST_EPOCH,
                         monitor="bleu4", best_bleu4=max(_bleu(e) for e in range(1, epoch + 1)),
                         samples=[{"image": "cat.jpg", "generated": "a cat", "references": ["a cat"]}]))
    if end is not None:
        out.append(_line(time=t0 + step * seconds_per_step, event="end", epoch=epochs, step=step, reason=end))
    with open(path, "wb") as f:
        f.write(b"\n".join(out) + b"\n")


@pytest.fixture(scope="module")
def big_feed(tmp_path_factory) -> str:
    folder = tmp_path_factory.mktemp("coco")
    path = str(folder / "metrics_coco.jsonl")
    write_feed(path)
    return path


def _counting_parses(monkeypatch) -> list[int]:
    calls = [0]
    original = feed.parse_line

    def counted(raw):
        calls[0] += 1
        return original(raw)

    monkeypatch.setattr(feed, "parse_line", counted)
    return calls


def test_runs_gives_state_epochs_and_best_without_parsing_step_lines(big_feed, monkeypatch, run):
    calls = _counting_parses(monkeypatch)
    info = run_info(os.path.dirname(big_feed), "coco")
    assert (info.state, info.stage, info.epochs_done, info.epochs_total) == ("finished", "train", EPOCHS, EPOCHS)
    assert (info.best_bleu4, info.best_cider_d, info.data, info.ended) == (0.5, 1.5, "coco_5_3", "completed")
    assert calls[0] < 10 * EPOCHS  # the start, epoch and end lines and the tail: never 300,000 step lines
    listed = json.loads(run("runs", "--output-folder", os.path.dirname(big_feed), "--json").output)
    assert [(r["name"], r["state"], r["epochs_done"], r["best_bleu4"]) for r in listed] == [("coco", "finished", 30,
                                                                                              0.5)]


def test_metrics_summary_and_bounded_series(big_feed, run):
    out = run("metrics", "--output-folder", os.path.dirname(big_feed), "--no-charts")
    assert out.exit_code == 0, out.output
    assert f"{STEPS + 2 * EPOCHS + 2} lines" in out.output and "30 of 30" in out.output
    assert "0.5000 at epoch 20 (CIDEr-D 1.5000)" in out.output
    assert [line.split()[1] for line in out.output.splitlines() if line.startswith("state")] == ["finished"]
    s = read_summary(big_feed)
    assert s.state == "finished" and s.last_step == STEPS
    steps = s.series["step_loss"]
    assert len(steps) <= 2 * MAX_STEP_BUCKETS + 2  # downsampled as it was read
    assert [x for x, _ in steps] == sorted(x for x, _ in steps) and (steps[0][0], steps[-1][0]) == (1, STEPS)
    assert min(y for _, y in steps) == pytest.approx(4.0 - EPOCHS * 0.05)  # the lowest and highest points stay
    assert max(y for _, y in steps) == pytest.approx(4.0 - 0.05 + 0.06)
    assert len(s.series["bleu4"]) == len(s.series["val_loss"]) == len(s.series["train_loss"]) == EPOCHS  # all kept


def test_run_info_asked_again_reads_only_what_was_appended(tmp_path, monkeypatch):
    path = tmp_path / "metrics_grow.jsonl"
    write_feed(str(path), steps=3_000, epochs=3, end=None)
    assert run_info(str(tmp_path), "grow").epochs_done == 3
    calls = _counting_parses(monkeypatch)
    with open(path, "ab") as f:  # a fourth epoch and the end
        f.write(_line(time=time.time(), event="epoch", split="val", epoch=4, step=4_000, bleu4=0.9, cider_d=2.0,
                      improved=True) + b"\n")
        f.write(_line(time=time.time(), event="end", epoch=4, reason="completed") + b"\n")
    info = run_info(str(tmp_path), "grow")
    assert (info.epochs_done, info.best_bleu4, info.state) == (4, 0.9, "finished") and calls[0] <= 3
    write_feed(str(path), steps=300, epochs=1, end=None)  # replaced by a shorter feed: read again
    info = run_info(str(tmp_path), "grow")
    assert (info.epochs_done, info.best_bleu4, info.state) == (1, _bleu(1), "crashed")


def test_step_series_of_a_short_run_is_kept_whole():
    lines = [{"time": float(i), "stage": "train", "event": "step", "step": i, "loss": 1.0 / i} for i in range(1, 301)]
    assert summarize(lines).series["step_loss"] == [(i, 1.0 / i) for i in range(1, 301)]


def _lock(folder, name, pid):
    with open(lock_file(str(folder), name), "w") as f:
        json.dump({"pid": pid, "host": socket.gethostname(), "started": time.time()}, f)


SHOWN = {"running": "running", "finished": "finished", "crashed": "CRASHED"}


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_runs_and_the_dashboard_agree_on_states(tmp_path, run):
    write_feed(str(tmp_path / "metrics_live.jsonl"), steps=3_000, epochs=3, end=None, t0=time.time() - 31)
    _lock(tmp_path, "live", os.getpid())  # held by a live process: running
    write_feed(str(tmp_path / "metrics_done.jsonl"), steps=3_000, epochs=3)
    write_feed(str(tmp_path / "metrics_dead.jsonl"), end=None)  # 300,000 steps, no end line, no lock: crashed
    expected = {"live": "running", "done": "finished", "dead": "crashed"}
    listed = {r["name"]: r["state"] for r in json.loads(run("runs", "--output-folder", tmp_path, "--json").output)}
    assert listed == expected == {r.name: r.state for r in list_runs(str(tmp_path))}

    app = Dashboard(str(tmp_path), "dead", poll_seconds=0.1, checkpoint_seconds=5, state_seconds=0.2)
    seen = []

    async def scenario():
        async with app.run_test(size=(160, 50)) as pilot:
            def crashed_shown():
                seen.append(_text(app, "#run"))
                return "CRASHED" in seen[-1]
            assert await _until(pilot, crashed_shown, 60)
            assert await _until(pilot, lambda: all(SHOWN[state] in row for row in _text(app, "#runs").splitlines()
                                                   for name, state in expected.items() if f" {name} " in row), 10)
            assert await _until(pilot, lambda: f"step {STEPS}" in _text(app, "#run"), 60)  # read through
            assert app.main.state == "crashed" and len(app.main.summary.series["step_loss"]) <= 2 * MAX_STEP_BUCKETS + 2

    asyncio.run(scenario())
    assert not any("live" in text or "running" in text for text in seen)  # never a guess from the feed


def test_axis_labels_are_readable():
    assert nice_ticks(1, 300_000, integer=True)[1] == ["100k", "200k", "300k"]
    assert nice_ticks(0, 225_000, integer=True)[1] == ["0", "100k", "200k"]
    assert nice_ticks(75_000, 225_000, integer=True)[1] == ["100k", "150k", "200k"]
    assert nice_ticks(2.69e-18, 0.002)[1] == ["0", "0.0005", "0.0010", "0.0015", "0.0020"]
    assert nice_ticks(1, 3, integer=True) == ([1, 2, 3], ["1", "2", "3"])
    assert nice_ticks(0, 2e6)[1][-1] == "2.0M"
    assert nice_ticks(2.69e-18, 8.07e-18)[1] == ["-0.0010", "-0.0005", "0", "0.0005", "0.0010"]  # zero, as it is


class _Widget:
    plt = plotext

    def refresh(self) -> None:
        pass


def test_charts_show_readable_ticks():
    steps = [{"time": float(i), "stage": "train", "event": "step", "step": i, "loss": 3.0 + (i % 5) / 10}
             for i in range(75_000, 300_001, 25)]
    vals = [{"time": float(e), "stage": "train", "event": "epoch", "split": "val", "epoch": e, "loss": 2.0,
             "bleu4": 2.69e-18 * e, "cider_d": 0.001 * e} for e in range(1, 4)]
    s = summarize(steps + vals)
    for spec in (STEP_LOSS, VAL_SCORES):
        plotext.clear_figure()
        plotext.plotsize(100, 20)
        draw_chart(_Widget(), spec, s)
        text = plotext.uncolorize(plotext.build())
        assert "75000.8" not in text and "0000000" not in text
        assert ("100k" in text and "300k" in text) if spec is STEP_LOSS else ("0.0030" in text and " 0┤" in text)
    [chart] = terminal_charts(summarize(vals), 100, 20, colour=False)[2:3]  # Validation BLEU-4
    assert "0000000" not in chart and "e-" not in chart
