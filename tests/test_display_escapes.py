"""Strings from a run folder's files reach the terminal as visible text (issue 27): escape sequences
(OSC titles, OSC 52 clipboard writes, CSI screen clears), newlines and Rich/Textual markup in a run
name (the feed's file name), the start line's ``data``, a sample caption and the end ``reason``, as
``capcli runs``, ``capcli metrics`` (in a real pty) and the dashboard show them."""

from __future__ import annotations

import asyncio
import json
import re

import pytest

from capcli.dashboard.app import Dashboard
from capcli.dashboard.panels import literal
from capcli.dashboard.runlist import RunsScreen
from capcli.runs.feed import FIELDS
from tests.test_dashboard import _text, _until
from tests.test_terminal import run_in_terminal

OSC_TITLE = "\x1b]0;PWNED\x07"
OSC_CLIPBOARD = "\x1b]52;c;SGVsbG8=\x07"
CLEAR = "\x1b[2J\x1b[H"
NAME = f"evil{OSC_TITLE}\nname"  # a feed's file name may hold anything but "/"
DATA = f"data{OSC_CLIPBOARD}{CLEAR}\nx"
CAPTION = "\x1b[31mred [$nope] [b]dog\x1b[0m\nsecond"
REASON = f"stopped by {OSC_TITLE}SIGINT\nforged line"
SGR = re.compile(r"\x1b\[[0-9;]*m")  # colours capcli itself writes


def _write(folder, end: bool = True) -> None:
    def line(**fields):
        return json.dumps({**dict.fromkeys(FIELDS), "stage": "train", **fields}) + "\n"

    lines = [line(time=1.0, event="start", epoch=0, step=0, epochs=2, run=NAME, data=DATA),
             line(time=2.0, event="step", split="train", epoch=1, step=1, loss=3.0),
             line(time=3.0, event="epoch", split="train", epoch=1, step=1, loss=2.9, top5=50.0),
             line(time=3.0, event="epoch", split="val", epoch=1, step=1, loss=2.8, bleu4=0.2, improved=True,
                  samples=[{"image": f"img{CLEAR}.jpg", "generated": CAPTION, "references": [CAPTION]}])]
    if end:
        lines.append(line(time=4.0, event="end", epoch=1, step=1, reason=REASON))
    (folder / f"metrics_{NAME}.jsonl").write_text("".join(lines))


def _raw_escapes(output: str) -> list[str]:
    """Control characters left once capcli's own colours are taken out (line ends aside)."""
    return [c for c in SGR.sub("", output) if (ord(c) < 32 and c not in "\r\n") or ord(c) == 0x7f]


def _lines(output: str) -> list[str]:
    return [line for line in SGR.sub("", output).replace("\r", "").split("\n") if line.strip()]


def test_runs_in_a_terminal_shows_names_as_visible_text(tmp_path):
    _write(tmp_path)
    rc, output = run_in_terminal("runs", "--output-folder", tmp_path, cwd=tmp_path, timeout=60)
    assert rc == 0, output
    assert _raw_escapes(output) == []
    header, row = _lines(output)  # one row: the newlines did not split it
    assert header.split()[0] == "RUN" and row.startswith("evil\\x1b]0;") and "stopped" in row


def test_metrics_in_a_terminal_shows_name_and_reason_as_visible_text(tmp_path):
    _write(tmp_path)
    for charts in ((), ("--no-charts",)):
        rc, output = run_in_terminal("metrics", "--output-folder", tmp_path, *charts, cwd=tmp_path, timeout=60)
        assert rc == 0, output
        assert _raw_escapes(output) == []
        [run_line] = [line for line in _lines(output) if line.startswith("run ")]
        assert "evil\\x1b]0;PWNED\\x07\\x0aname" in run_line
        assert "ended (stopped by \\x1b]0;PWNED\\x07SIGINT\\x0aforged line)" in run_line
        assert not any(line.startswith(("forged", "name")) for line in _lines(output))


def test_literal_shows_markup_and_controls_as_they_are():
    from textual.content import Content

    for text in (CAPTION, "[$nope]x[/]", "\\[b]q", "x[/b]y", "[@click=app.quit]k[/]"):
        shown = Content.from_markup(f"[b]{literal(text)}[/b] [dim]ok[/]").plain
        assert "\n" not in shown and "\x1b" not in shown
        assert shown == text.replace("\x1b", "\\x1b").replace("\n", "\\x0a") + " ok"


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_dashboard_shows_hostile_strings_without_exiting(tmp_path):
    _write(tmp_path)
    app = Dashboard(str(tmp_path), NAME, poll_seconds=0.1, checkpoint_seconds=5, state_seconds=0.2)

    async def scenario():
        async with app.run_test(size=(160, 50)) as pilot:
            assert await _until(pilot, lambda: "stopped" in _text(app, "#run"), 10)
            first = _text(app, "#run").splitlines()[0]
            assert "evil\\x1b]0;PWNED\\x07\\x0aname" in first and "stopped by \\x1b]0;PWNED\\x07SIGINT\\x0a" in first
            assert await _until(pilot, lambda: "red [$nope] [b]dog" in _text(app, "#samples"), 10)
            samples = _text(app, "#samples")
            assert "\\x1b[31mred [$nope] [b]dog\\x1b[0m\\x0asecond" in samples and "img\\x1b[2J" in samples
            assert await _until(pilot, lambda: "evil\\x1b]0;" in _text(app, "#runs"), 10)
            await pilot.press("l")
            assert await _until(pilot, lambda: isinstance(app.screen, RunsScreen))
            await pilot.press("escape")
            await pilot.pause(1.0)  # some polls and redraws later
            assert app.is_running and app.error_message is None
            assert all("\x1b" not in _text(app, s) for s in ("#run", "#runs", "#samples"))

    asyncio.run(scenario())
    assert app.error_message is None


def test_save_png_with_a_name_matplotlib_would_parse(tmp_path, run):
    pytest.importorskip("matplotlib")
    name = "price$x^$ \x1b]0;T\x07"  # two "$": mathtext, whose "x^" does not parse
    (tmp_path / f"metrics_{name}.jsonl").write_text(json.dumps(
        {**dict.fromkeys(FIELDS), "time": 1.0, "stage": "train", "event": "epoch", "split": "val", "epoch": 1,
         "loss": 2.0, "bleu4": 0.2}) + "\n")
    result = run("metrics", "--output-folder", tmp_path, "--save-png", "--no-charts")
    assert result.exit_code == 0, result.output
    assert "\x1b" not in result.output.replace(str(tmp_path), "").split("wrote")[0]
    assert len(list(tmp_path.glob("training_visualization_*.png"))) == 1


def test_captions_from_a_hostile_word_map_are_shown_not_obeyed(capsys):
    from capcli.cli import render
    from capcli.inference.captioning import CaptionResult

    words = ["a", "dog\x1b]52;c;aGk=\x07", "\x1b[2J", "runs\nfast"]
    results = [CaptionResult("x.jpg", words=words, score=-1.0), CaptionResult("y\x1b]0;T\x07.jpg", error="bad\x1b[2J")]
    render.captions(results, {"x.jpg": ["an\x1b[31m original"]}, {}, as_json=False, no_attention=False)
    out, err = capsys.readouterr()
    assert "\x1b" not in out + err
    assert out.splitlines() == ["x.jpg: a dog\\x1b]52;c;aGk=\\x07 \\x1b[2J runs\\x0afast",
                                "    original: an\\x1b[31m original"]
    assert err.splitlines() == ["Error: bad\\x1b[2J"]
