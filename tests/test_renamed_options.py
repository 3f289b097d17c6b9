"""Options renamed so that one name means one thing (issue 28): the old spellings still work for a
release, each with a one-line note on stderr."""

import pytest

from capcli.cli.renamed import RENAMED, rewrite


@pytest.mark.parametrize("command, args, expected, noted", [
    ("train", ["--name", "f8k", "--epochs", "2"], ["--data-name", "f8k", "--epochs", "2"], ["--name"]),
    ("evaluate", ["-b", "1,3", "--name=f8k"], ["--beams", "1,3", "--data-name=f8k"], ["-b", "--name"]),
    ("evaluate", ["-b3", "--beam-size=5"], ["--beams=3", "--beams=5"], ["-b", "--beam-size"]),
    ("metrics", ["--name", "run1"], ["--run-name", "run1"], ["--name"]),
    ("prep", ["--json", "k.json", "--csv", "r.csv"], ["--captions", "k.json", "--captions", "r.csv"],
     ["--json", "--csv"]),
    ("prep", ["--json", "a.json", "--json", "b.json"], ["--captions", "a.json", "--captions", "b.json"], ["--json"]),
    ("bench", ["--json", "b.json"], ["--json-file", "b.json"], ["--json"]),
    ("caption", ["-b", "3", "--json"], ["-b", "3", "--json"], []),  # caption's own options are unchanged
    ("train", ["--", "--name"], ["--", "--name"], []),
])
def test_old_spellings_become_new_ones(capsys, command, args, expected, noted):
    assert rewrite(command, args) == expected
    notes = capsys.readouterr().err.splitlines()
    assert notes == [f"Note: capcli {command} {old} is now {RENAMED[command][old]}; {old} goes in a later release."
                     for old in noted]


def test_an_old_spelling_still_runs_the_command_with_one_note(trained_run, run):
    _, out = trained_run
    old = run("metrics", "--output-folder", out, "--name", "shapes_5_1", "--no-charts")
    new = run("metrics", "--output-folder", out, "--run-name", "shapes_5_1", "--no-charts")
    assert old.exit_code == 0 and new.exit_code == 0, old.output
    assert old.stderr == "Note: capcli metrics --name is now --run-name; --name goes in a later release.\n"
    assert new.stderr == "" and old.stdout == new.stdout and "shapes_5_1" in new.stdout
