"""docs/reference.md is generated from the commands (issue 28): it is up to date, and every option
each command's --help prints is in it."""

import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from capcli.cli.commands import cli
from capcli.cli.reference import reference

PAGE = Path(__file__).resolve().parent.parent / "docs" / "reference.md"
OPTION = re.compile(r"(?<![\w-])(--?[A-Za-z][\w-]*)")
DECLARED = re.compile(r"^  (-.*?)(?: {2,}|$)", re.M)  # the option column of Click's help


def _declared(text: str) -> set[str]:
    return {name for column in DECLARED.findall(text.split("Options:", 1)[1]) for name in OPTION.findall(column)}


def _commands() -> list[str]:
    return [name for name, command in cli.commands.items() if not command.hidden]


def test_the_reference_page_is_what_make_docs_writes():
    assert PAGE.read_text(encoding="utf-8") == reference(), "docs/reference.md is out of date: run `make docs`"


@pytest.mark.parametrize("name", _commands())
def test_every_option_of_a_commands_help_is_in_the_reference(name):
    shown = CliRunner().invoke(cli, [name, "--help"], terminal_width=80)
    assert shown.exit_code == 0, shown.output
    options = _declared(shown.output)
    section = PAGE.read_text(encoding="utf-8").split(f"## capcli {name}\n", 1)[1].split("\n## ", 1)[0]
    assert len(options) >= 2 and "--help" in options
    assert sorted(options - _declared(section)) == []


def test_every_command_has_its_section():
    page = PAGE.read_text(encoding="utf-8")
    assert [line[len("## capcli "):] for line in page.splitlines() if line.startswith("## capcli ")] == \
        sorted(_commands())


@pytest.mark.parametrize("name", [None, *_commands()])
def test_every_help_fits_an_80_column_terminal(name):
    """Over SSH at 80 x 24 a longer example line wraps in the middle of a path."""
    shown = CliRunner().invoke(cli, [*([name] if name else []), "--help"], terminal_width=80)
    assert shown.exit_code == 0 and [line for line in shown.output.splitlines() if len(line) > 80] == []
