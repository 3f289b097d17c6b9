"""The same `capcli train` command under torchrun with two CPU processes (gloo)."""

from __future__ import annotations

import math
import os
import subprocess
import sys

import torch

from capcli.checkpoint import load_checkpoint
from capcli.feed import read_feed
from tests.test_train import TINY

# Runs `capcli train` unchanged, then saves each rank's final decoder weights next to the outputs.
WRAPPER = """
import sys, torch
import capcli.train as train
from capcli.cli import main

out = sys.argv[1]
fit = train.Trainer.fit
def fit_and_dump(self):
    result = fit(self)
    torch.save(train.unwrap(self.decoder).state_dict(), out + f"/rank{self.dist.rank}.pt")
    return result
train.Trainer.fit = fit_and_dump
sys.argv = ["capcli"] + sys.argv[2:]
main()
"""


def test_torchrun_two_processes_one_writer(data, tmp_path):  # noqa: F811
    out = tmp_path / "out"
    out.mkdir()
    wrapper = tmp_path / "wrapper.py"
    wrapper.write_text(WRAPPER)
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    command = [torchrun, "--standalone", "--nproc_per_node=2", str(wrapper), str(out), "train",
               "--data-folder", str(data), "--output-folder", str(out), *map(str, TINY), "--epochs", "2"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    lines = read_feed(str(out / "metrics_shapes_5_1.jsonl"))
    val_epochs = [line["epoch"] for line in lines if line["event"] == "epoch" and line["split"] == "val"]
    assert val_epochs == [1, 2]  # one writer: no duplicated lines
    assert sum(line["event"] == "end" for line in lines) == 1
    ckpt = load_checkpoint(str(out / "checkpoint_shapes_5_1.pth.tar"))
    # 32 training images shared by 2 ranks; batch 16 captions = 3 images of 5 captions a step
    assert ckpt["step"] == 2 * math.ceil(32 / 2 / 3)
    assert ckpt["epoch"] == 2
    rank0, rank1 = torch.load(out / "rank0.pt"), torch.load(out / "rank1.pt")
    for key, value in ckpt["decoder"].items():  # the saved weights are rank 0's, and DDP kept ranks equal
        assert torch.equal(value, rank0[key]), key
        assert torch.equal(rank0[key], rank1[key]), key
