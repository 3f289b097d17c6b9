"""``capcli runs``: the runs of an output folder, their progress, best scores and state.

The table fits the terminal (80 columns at least: the run and data names are shortened with "…"
to fit); names read from the folder's files show control characters as visible escapes, so they
stay on one line; ``--json`` prints the :class:`capcli.runs.summary.RunInfo` fields of each run for scripts.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time

import click

from capcli.cli import options
from capcli.text import visible

HEADERS = ("RUN", "DATA", "STAGE", "EPOCHS", "BLEU-4", "CIDEr-D", "STATE", "UPDATED")
_STATE_COLOURS = {"running": "green", "finished": None, "stopped": "yellow", "crashed": "red"}
_GAP = "  "


def ago(when: float | None, now: float) -> str:
    """``12s ago``, ``5m ago``, ``3h ago``, ``4d ago`` within 30 days, else the local date."""
    if when is None:
        return "–"
    seconds = max(0, int(now - when))
    if seconds < 60:
        return f"{seconds}s ago"
    if seconds < 3600:
        return f"{seconds // 60}m ago"
    if seconds < 86400:
        return f"{seconds // 3600}h ago"
    if seconds < 30 * 86400:
        return f"{seconds // 86400}d ago"
    return time.strftime("%Y-%m-%d", time.localtime(when))


def _score(value: float | None, spec: str) -> str:
    return "–" if value is None else format(value, spec)


def run_row(run, now: float) -> list[str]:
    """The cells of ``run``'s row; its names come from files, so they are made visible
    (``capcli.text.visible``): no escape sequence or newline reaches the terminal."""
    total = "?" if run.epochs_total is None else str(run.epochs_total)
    return [visible(run.name), visible(run.data), run.stage or "–", f"{run.epochs_done}/{total}",
            _score(run.best_bleu4, ".4f"), _score(run.best_cider_d, ".4f"), run.state, ago(run.last_update, now)]


def _shorten(text: str, width: int) -> str:
    return text if len(text) <= width else text[:max(width - 1, 0)] + "…"


def fit_widths(rows: list[list[str]], width: int) -> list[int]:
    """Column widths of ``rows`` (headers included) within ``width``: the run and data columns give
    way, down to 8 characters each."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(HEADERS))]
    excess = sum(widths) + len(_GAP) * (len(widths) - 1) - width
    for column in (1, 0):  # data first, then the run name
        if excess <= 0:
            break
        cut = min(excess, max(widths[column] - 8, 0))
        widths[column] -= cut
        excess -= cut
    return widths


def runs_table(runs: list, now: float, width: int = 80) -> list[str]:
    """The table's lines, plain text (numbers right-aligned), ``width`` columns at most."""
    rows = [list(HEADERS)] + [run_row(run, now) for run in runs]
    widths = fit_widths(rows, width)
    right = {3, 4, 5}
    return [_GAP.join((_shorten(cell, w).rjust(w) if i in right else _shorten(cell, w).ljust(w))
                      for i, (cell, w) in enumerate(zip(row, widths))).rstrip() for row in rows]


@click.command("runs")
@options.output_folder_option("The run folder to list.")
@options.json_option(
    "Print a JSON list of runs: name, data, stage, epochs_done, epochs_total, best_bleu4, "
    "best_cider_d, state (running, finished, stopped, crashed), last_update (unix time), feed, "
    "ended (the end line's reason when it is the feed's last line).")
def runs_command(output_folder: str, as_json: bool) -> None:
    """List the runs in a folder: data, stage, epochs, best BLEU-4 and CIDEr-D, state and last update.

    A run is running (its process holds the run's lock), finished (every epoch done), stopped
    (by a signal or early stopping) or crashed (its process died, or failed, before the end).

    \b
    Example:
      capcli runs
      capcli runs --json | jq '.[] | select(.state == "crashed")'
    """
    import os

    from capcli.errors import InputError
    from capcli.paths import feed_pattern
    from capcli.runs.summary import list_runs

    if not os.path.isdir(output_folder):
        raise InputError(f"{output_folder}: no such run folder (train first, or pass --output-folder)")
    runs = list_runs(output_folder)
    if as_json:
        click.echo(json.dumps([dataclasses.asdict(run) for run in runs], indent=2))
        return
    if not runs:
        click.echo(f"no runs in {output_folder} (no {os.path.basename(feed_pattern(output_folder))} there yet)")
        return
    lines = runs_table(runs, time.time(), max(80, shutil.get_terminal_size((80, 24)).columns))
    click.echo(lines[0])
    for run, line in zip(runs, lines[1:]):
        state = line.rstrip().rsplit(run.state, 1)  # colour the state word alone
        colour = _STATE_COLOURS.get(run.state)
        click.echo(click.style(run.state, fg=colour).join(state) if colour and len(state) == 2 else line)
