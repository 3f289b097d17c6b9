"""The same `capcli train` command under torchrun with two CPU processes (gloo)."""

from __future__ import annotations

import math
import os
import subprocess
import sys

from capcli.checkpoint import load_checkpoint
from capcli.feed import read_feed
from tests.test_train import TINY, data  # noqa: F401  (module fixture)


def test_torchrun_two_processes_one_writer(data, tmp_path):  # noqa: F811
    out = tmp_path / "out"
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    command = [torchrun, "--standalone", "--nproc_per_node=2", "-m", "capcli.cli", "train",
               "--data-folder", str(data), "--output-folder", str(out), *map(str, TINY), "--epochs", "2"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    lines = read_feed(str(out / "metrics_shapes_5_1.jsonl"))
    val_epochs = [line["epoch"] for line in lines if line["event"] == "epoch" and line["split"] == "val"]
    assert val_epochs == [1, 2]  # one writer: no duplicated lines
    assert sum(line["event"] == "end" for line in lines) == 1
    ckpt = load_checkpoint(str(out / "checkpoint_shapes_5_1.pth.tar"))
    rows = 32 * 5  # 32 training images × 5 captions, shared between 2 ranks, batch 16
    assert ckpt["step"] == 2 * math.ceil(rows / 2 / 16)
    assert ckpt["epoch"] == 2
