"""Every long command run in a real (pseudo-)terminal: tqdm bars drawn, no crash, 80 columns.

The rest of the suite only sees redirected output (CliRunner, pipes), where ``TerminalProgress``
prints plain lines; here each command is a real process whose stdin, stdout and stderr are the
slave end of a pty sized 80×24, so ``isatty()`` is true and the bar path runs.
"""

from __future__ import annotations

import fcntl
import io
import os
import re
import select
import signal
import struct
import subprocess
import sys
import termios
import time

import pytest

from capcli.runtime.progress import TerminalProgress, close_open_bars
from tests.conftest import TINY_TRAIN

COLUMNS, ROWS = 80, 24
BAR = re.compile(r"\r[^\r\n]*\d+%\|")  # what tqdm redraws in place: "\rdesc:  30%|███  | 3/10 …"
NAME = "shapes_5_1"


class _FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def run_in_terminal(*args, cwd, timeout: float = 120, keys: bytes = b"") -> tuple[int, str]:
    """Run ``capcli ARGS…`` with a pty as its terminal; returns (exit code, everything it drew).

    Reads the master end until EOF (every holder of the slave end has exited); past ``timeout``
    the process group is killed and the test fails, so a stuck command cannot hang the suite.
    ``keys`` are typed every second, starting 2 s after the command first draws (an app's keys).
    """
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", ROWS, COLUMNS, 0, 0))
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    env["TERM"] = "xterm-256color"
    proc = subprocess.Popen([sys.executable, "-m", "capcli.cli", *map(str, args)], cwd=cwd, env=env,
                            stdin=slave, stdout=slave, stderr=slave, start_new_session=True)
    os.close(slave)
    chunks, deadline, typed_at = [], time.monotonic() + timeout, None
    try:
        while (left := deadline - time.monotonic()) > 0:
            if select.select([master], [], [], min(left, 1.0))[0]:
                try:
                    data = os.read(master, 65536)
                except OSError:  # EIO: the last slave end closed
                    break
                if not data:
                    break
                chunks.append(data)
            if keys and chunks:
                typed_at = typed_at or time.monotonic() + 2
                if time.monotonic() >= typed_at:
                    os.write(master, keys)
                    typed_at = time.monotonic() + 1
        else:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            pytest.fail(f"capcli {' '.join(map(str, args))} still running after {timeout} s:\n"
                        + b"".join(chunks).decode(errors="replace")[-3000:])
    finally:
        os.close(master)
    return proc.wait(timeout=30), b"".join(chunks).decode("utf-8", errors="replace")


def assert_ran_with_bars(rc: int, output: str, bars: bool = True) -> None:
    """Exit 0, no traceback, a tqdm bar drawn in place, and no bar wider than the terminal."""
    assert rc == 0, output
    assert "Traceback" not in output, output
    if bars:
        assert BAR.search(output), f"no progress bar drawn:\n{output!r}"
    for piece in re.split(r"[\r\n]", output):
        if "%|" in piece:
            assert len(piece) <= COLUMNS, f"bar wider than {COLUMNS} columns: {piece!r}"


@pytest.fixture(scope="module")
def terminal_run(tmp_path_factory):
    """(data folder, output folder with BEST_shapes_5_1.pth.tar), both made by prep and train in a pty."""
    root = tmp_path_factory.mktemp("terminal")
    data, out = root / "data", root / "out"
    assert_ran_with_bars(*run_in_terminal("prep", "--num-images", 20, "--image-size", 32, "--min-word-freq", 1,
                                          "--workers", 1, "--output-folder", data, cwd=root))
    assert_ran_with_bars(*run_in_terminal("train", "--data-folder", data, "--output-folder", out, *TINY_TRAIN,
                                          "--epochs", 1, cwd=root))
    assert (out / f"BEST_{NAME}.pth.tar").is_file()
    return data, out


def test_bar_task_draws_postfix_and_messages_cleanly():
    stream = _FakeTerminal()
    progress = TerminalProgress(stream)
    task = progress.task("epoch 1/1", 10, "batch")
    task.advance(3)
    task.show("loss 1.0")
    progress.message("a note")  # clears the bar, writes the note on its own line, redraws the bar
    task.close()
    text = stream.getvalue()
    before, note, after = text.partition("a note\n")
    assert note and before.startswith("\repoch 1/1:") and before.endswith("\r")
    redrawn = after.split("\r")[1]
    assert "%|" in redrawn and "3/10" in redrawn and "loss 1.0" in redrawn
    assert after.endswith("\r") and after.split("\r")[-2].strip() == ""  # the closed bar is wiped


def test_close_open_bars_wipes_a_bar_left_by_a_failed_loop():
    stream = _FakeTerminal()
    task = TerminalProgress(stream).task("prep TRAIN", 10, "img")
    task.advance(4)
    close_open_bars()  # what the error boundary does before it prints the error
    drawn = stream.getvalue()
    assert drawn.startswith("\rprep TRAIN:") and drawn.endswith("\r") and drawn.split("\r")[-2].strip() == ""
    close_open_bars()
    task.close()  # the service's own close after the boundary's: nothing more is drawn
    assert stream.getvalue() == drawn


def test_plain_lines_include_the_status_text():
    stream = io.StringIO()
    progress = TerminalProgress(stream, interval=0.0)
    task = progress.task("epoch 1/1", 4, "batch")
    task.show("loss 2.5 top-5 70.0")
    task.advance(2)
    task.close()
    lines = stream.getvalue().splitlines()
    assert lines and all(line.startswith("epoch 1/1: ") and line.endswith(" loss 2.5 top-5 70.0") for line in lines)
    assert "%|" not in stream.getvalue() and "\r" not in stream.getvalue()


def test_prep_and_train_in_a_terminal(terminal_run):
    data, out = terminal_run
    assert (data / f"TRAIN_IMAGES_{NAME}.hdf5").is_file() and (out / f"checkpoint_{NAME}.pth.tar").is_file()


def test_a2c_in_a_terminal(terminal_run, tmp_path):
    data, out = terminal_run
    rc, output = run_in_terminal("a2c", "--checkpoint", out / f"BEST_{NAME}.pth.tar", "--data-folder", data,
                                 "--epochs", 1, "--batch-size", 8, "--output-folder", tmp_path, cwd=tmp_path)
    assert_ran_with_bars(rc, output)


def test_train_and_caption_with_a_modern_encoder_in_a_terminal(terminal_run, tmp_path):
    """A torchvision ConvNeXt (issue 29): its feature cache and epoch bars, then captions with its
    7 x 7 attention picture."""
    data, _ = terminal_run
    rc, output = run_in_terminal("train", "--data-folder", data, "--output-folder", tmp_path, "--encoder",
                                 "convnext_tiny", "--no-pretrained", "--frozen-encoder", "--epochs", 1,
                                 "--batch-size", 16, "--embed-dim", 16, "--attention-dim", 16, "--decoder-dim", 32,
                                 cwd=tmp_path)
    assert_ran_with_bars(rc, output)
    image = sorted((data / "shapes" / "images").iterdir())[0]
    rc, output = run_in_terminal("caption", image, "-v", "-m", tmp_path / f"BEST_{NAME}.pth.tar", "--output-folder",
                                 tmp_path / "pictures", cwd=tmp_path)
    assert_ran_with_bars(rc, output)
    assert (tmp_path / "pictures" / "attention_visualization.png").is_file()


def test_caption_in_a_terminal(terminal_run, tmp_path):
    data, out = terminal_run
    image = sorted((data / "shapes" / "images").iterdir())[0]
    rc, output = run_in_terminal("caption", image, "-m", out / f"BEST_{NAME}.pth.tar", "--output-folder", tmp_path,
                                 cwd=tmp_path)
    assert_ran_with_bars(rc, output)


def test_evaluate_in_a_terminal(terminal_run, tmp_path):
    data, out = terminal_run
    rc, output = run_in_terminal("evaluate", "-m", out / f"BEST_{NAME}.pth.tar", "--data-folder", data,
                                 "--beams", 1, "--output-folder", tmp_path, cwd=tmp_path)
    assert_ran_with_bars(rc, output)


def test_metrics_in_a_terminal(terminal_run):
    data, out = terminal_run
    rc, output = run_in_terminal("metrics", "--output-folder", out, cwd=out)
    assert_ran_with_bars(rc, output, bars=False)  # charts, no long loop
    assert NAME in output


def test_demo_in_a_terminal(tmp_path):
    rc, output = run_in_terminal("demo", "--num-images", 10, "--epochs", 1, "--workers", 1,
                                 "--data-folder", tmp_path / "data", "--output-folder", tmp_path / "out",
                                 cwd=tmp_path, timeout=240)
    assert_ran_with_bars(rc, output)
    assert any((tmp_path / "out").glob("attention_visualization_*.png"))


def test_dashboard_in_a_terminal(terminal_run):
    _, out = terminal_run
    rc, output = run_in_terminal("dashboard", "--output-folder", out, cwd=out, timeout=90, keys=b"q")
    assert rc == 0 and "Traceback" not in output, output
    assert NAME in output and "\x1b[" in output  # the app drew the run on the screen
