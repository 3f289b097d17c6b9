"""Options renamed so that one name means one thing (the data set is ``--data-name``, the run
``--run-name``; ``--json`` only ever prints JSON; ``-b`` is one beam size). The old spellings still
work for a release: the group rewrites them before the command parses its arguments and prints a
one-line note on stderr."""

from __future__ import annotations

import click

# command → {old spelling: new spelling}
RENAMED = {
    "train": {"--name": "--data-name"},
    "a2c": {"--name": "--data-name"},
    "evaluate": {"--name": "--data-name", "-b": "--beams", "--beam": "--beams", "--beam-size": "--beams"},
    "metrics": {"--name": "--run-name"},
    "dashboard": {"--name": "--run-name"},
    "prep": {"--json": "--captions", "--csv": "--captions"},
    "bench": {"--json": "--json-file"},
}


def _renamed(arg: str, table: dict[str, str]) -> tuple[str, str] | None:
    """(old, new argument) when ``arg`` is an old spelling: alone, ``--old=VALUE`` or ``-bVALUE``."""
    for old, new in table.items():
        if arg == old:
            return old, new
        if old.startswith("--") and arg.startswith(old + "="):
            return old, new + arg[len(old):]
        if len(old) == 2 and arg.startswith(old) and not arg.startswith("--"):
            return old, f"{new}={arg[2:]}"
    return None


def rewrite(command: str | None, args: list[str]) -> list[str]:
    """``args`` of ``command`` with every old spelling replaced by its new one (a note for each)."""
    table = RENAMED.get(command or "")
    if not table:
        return args
    out, noted = [], set()
    for i, arg in enumerate(args):
        if arg == "--":
            return out + args[i:]
        found = _renamed(arg, table)
        if found is None:
            out.append(arg)
            continue
        old, new = found
        if old not in noted:
            noted.add(old)
            click.echo(f"Note: capcli {command} {old} is now {table[old]}; {old} goes in a later release.", err=True)
        out.append(new)
    return out
