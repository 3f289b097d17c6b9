"""The command reference, ``docs/reference.md``: every command's ``--help`` as Click prints it at
100 columns, generated from the commands themselves (``make docs``), so it cannot drift from them
(``tests/test_reference.py`` fails when the file is out of date)."""

from __future__ import annotations

import click

from capcli.cli.commands import cli

WIDTH = 100
HEADER = """# Command reference

Every command's `--help`, generated from the commands themselves by `make docs` (`python -m
capcli.cli.reference > docs/reference.md`); a test fails when this page is out of date. How the
commands behave, with examples, is in [commands.md](commands.md) and [data.md](data.md).
"""


def _help(command: click.Command, name: str, parent: click.Context) -> str:
    ctx = click.Context(command, info_name=name, parent=parent, terminal_width=WIDTH)
    return command.get_help(ctx)


def reference() -> str:
    """The page's Markdown: ``capcli --help``, then each visible command's, in the group's order."""
    # the group's own settings (-h as well as --help, 100 columns), as when a user asks for --help
    root = click.Context(cli, info_name="capcli", terminal_width=WIDTH, **cli.context_settings)
    parts = [HEADER, "## capcli\n", "```text", cli.get_help(root), "```\n"]
    for name in cli.list_commands(root):
        command = cli.get_command(root, name)
        if command is None or command.hidden:
            continue
        parts += [f"## capcli {name}\n", "```text", _help(command, name, root), "```\n"]
    return "\n".join(parts)


if __name__ == "__main__":
    click.echo(reference(), nl=False)
