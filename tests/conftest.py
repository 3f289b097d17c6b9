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

from capcli.cli.commands import cli


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


TINY_TRAIN = ("--encoder", "resnet18", "--embed-dim", 16, "--attention-dim", 16, "--decoder-dim", 32,
              "--batch-size", 16, "--precision", "fp32", "--seed", 3, "--frozen-encoder")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A prepared 40-image shapes set (32 px, every word kept), one per test module."""
    from capcli.config import PrepConfig
    from capcli.data.prep import run_prep

    folder = tmp_path_factory.mktemp("data")
    run_prep(PrepConfig(output_folder=str(folder), num_images=40, image_size=32, min_word_freq=1, workers=1))
    return folder


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory):
    """(data folder, output folder holding BEST_shapes_5_1.pth.tar) after one epoch on 40 tiny
    shapes images. Tests must not change these folders (copy them first)."""
    from capcli.config import PrepConfig
    from capcli.data.prep import run_prep

    root = tmp_path_factory.mktemp("trained")
    data, out = root / "data", root / "out"
    run_prep(PrepConfig(output_folder=str(data), num_images=40, image_size=32, min_word_freq=1, workers=1))
    result = CliRunner().invoke(cli, [str(a) for a in ("train", "--data-folder", data, "--output-folder", out,
                                                         *TINY_TRAIN, "--epochs", 1)])
    assert result.exit_code == 0, result.output
    return data, out
