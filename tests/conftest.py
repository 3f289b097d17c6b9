"""Shared fixtures: tiny images and caption files written in the real formats."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from capcli.cli import cli


def write_image(path, colour=(200, 30, 30), size=(24, 16), fmt=None) -> str:
    """A solid-colour RGB image file; returns its path as a string."""
    os.makedirs(os.path.dirname(str(path)), exist_ok=True)
    Image.new("RGB", size, colour).save(path, format=fmt)
    return str(path)


def distinct_colour(i: int) -> tuple[int, int, int]:
    """Colours far enough apart to identify image i after JPEG compression and resizing."""
    rng = np.random.default_rng(i)
    return tuple(int(v) for v in rng.integers(20, 236, size=3))


def karpathy_entry(filename, split, captions, filepath=None) -> dict:
    entry = {"filename": filename, "split": split,
             "sentences": [{"tokens": c, "raw": " ".join(c)} for c in captions]}
    if filepath is not None:
        entry["filepath"] = filepath
    return entry


def write_karpathy(path, dataset, entries) -> str:
    with open(path, "w") as f:
        json.dump({"dataset": dataset, "images": entries}, f)
    return str(path)


@pytest.fixture
def run():
    """Invoke ``capcli ARGS…`` in-process; returns Click's Result."""
    runner = CliRunner()

    def invoke(*args: str):
        return runner.invoke(cli, [str(a) for a in args])

    return invoke


def run_subprocess(*args: str, cwd=None, **kwargs) -> subprocess.Popen:
    """Start ``capcli ARGS…`` as a real process (for signals)."""
    return subprocess.Popen([sys.executable, "-m", "capcli.cli", *map(str, args)], cwd=cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)
