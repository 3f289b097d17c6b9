"""`capcli train` on two CPU ranks (gloo): equal steps on an odd number of images, validation
equal to one process's, one writer, and a lost or signalled rank stopping every rank."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from dataclasses import replace

import pytest
import torch

from capcli.runs.feed import read_feed
from capcli.store.checkpoint import load_checkpoint
from capcli.store.files import read_checkpoint
from tests.test_train import TINY

NAME = "shapes_5_1"
ONE_IMAGE_A_STEP = ("--batch-size", 5)  # 5 captions: one image a step; validation batches of 5 images
# Runs `capcli train` unchanged, then saves each rank's step count and final decoder weights.
WRAPPER = """
import sys, torch
import capcli.training.train as train
from capcli.cli.commands import main

out = sys.argv[1]
step, fit, steps = train.Trainer.train_step, train.Trainer.fit, []
def counted_step(self, *args):
    steps.append(1)
    return step(self, *args)
def fit_and_dump(self):
    result = fit(self)
    torch.save({"steps": len(steps), "decoder": train.unwrap(self.decoder).state_dict()},
               out + f"/rank{self.dist.rank}.pt")
    return result
train.Trainer.train_step, train.Trainer.fit = counted_step, fit_and_dump
sys.argv = ["capcli"] + sys.argv[2:]
main()
"""


@pytest.fixture(scope="module")
def odd_data(tmp_path_factory):
    """A prepared 61-image shapes set: 49 training images (odd, so 2 ranks need padding), 6 validation."""
    from capcli.config import PrepConfig
    from capcli.data.prep import run_prep

    folder = tmp_path_factory.mktemp("odd")
    run_prep(PrepConfig(output_folder=str(folder), num_images=61, image_size=32, min_word_freq=1, workers=1))
    return folder


def _train_args(data, out, *extra):
    return ("train", "--data-folder", data, "--output-folder", out, *TINY, *ONE_IMAGE_A_STEP, *extra)


def _single_process_validation(data, out, tmp_path) -> tuple[float, float, float, float]:
    """Validation loss, top-5, BLEU-4 and CIDEr-D of the run's checkpoint, computed by this one process."""
    from capcli.data.hdf5 import find_prepared
    from capcli.paths import train_files
    from capcli.runtime.distributed import DistInfo
    from capcli.runtime.progress import SILENT
    from capcli.training.train import Trainer

    ckpt = read_checkpoint(str(out / f"checkpoint_{NAME}.pth.tar"))
    prepared = find_prepared(str(data))
    config = replace(ckpt.train_config, output_folder=str(tmp_path / "single"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the ranks ran with OMP_NUM_THREADS=1: the same kernels, the same rounding
    try:
        trainer = Trainer(config, ckpt.model_config, prepared, prepared.word_map(),
                          train_files(config.output_folder, prepared.name), torch.device("cpu"), DistInfo(),
                          SILENT, ckpt)
        return trainer.validate()
    finally:
        torch.set_num_threads(threads)


def test_two_ranks_on_49_images_step_alike_and_validate_as_one(odd_data, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    wrapper = tmp_path / "wrapper.py"
    wrapper.write_text(WRAPPER)
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    command = [torchrun, "--standalone", "--nproc_per_node=2", str(wrapper), str(out),
               *map(str, _train_args(odd_data, out, "--epochs", 1))]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "CAPCLI_DIST_TIMEOUT": "60"})
    assert done.returncode == 0, done.stderr[-2000:]
    rank0, rank1 = torch.load(out / "rank0.pt"), torch.load(out / "rank1.pt")
    assert rank0["steps"] == rank1["steps"] == 25  # 49 images padded to 50, 25 a rank, one a step
    ckpt = load_checkpoint(str(out / f"checkpoint_{NAME}.pth.tar"))
    assert ckpt["epoch"] == 1 and ckpt["step"] == 25
    for key, value in ckpt["decoder"].items():  # the saved weights are rank 0's, and DDP kept ranks equal
        assert torch.equal(value, rank0["decoder"][key]), key
        assert torch.equal(rank0["decoder"][key], rank1["decoder"][key]), key
    lines = read_feed(str(out / f"metrics_{NAME}.jsonl"))
    assert [line["event"] for line in lines].count("end") == 1  # one writer
    assert done.stdout.count("Trained") == 1  # one printer
    assert len(re.findall(r"^epoch 1/1  train loss", done.stderr, re.M)) == 1
    # rank 0 decoded validation images 0-4, rank 1 image 5; together they equal one process
    val_loss, val_top5, bleu4, cider = _single_process_validation(odd_data, out, tmp_path)
    [epoch] = ckpt["epochs"]
    assert (epoch["val_bleu4"], epoch["val_cider_d"]) == (bleu4, cider)
    assert epoch["val_loss"] == pytest.approx(val_loss, rel=1e-6)
    assert epoch["val_top5"] == pytest.approx(val_top5, rel=1e-6)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_ranks(data, out, timeout: float) -> list[subprocess.Popen]:
    """Two ranks started as torchrun starts them (its environment variables), without its agent,
    which would itself stop the other rank when one fails and hide whether capcli does."""
    port, procs = _free_port(), []
    for rank in range(2):
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
               "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2",
               "CAPCLI_DIST_TIMEOUT": str(timeout)}
        procs.append(subprocess.Popen([sys.executable, "-m", "capcli.cli", *map(str, _train_args(data, out))],
                                      env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    return procs


def _wait_for_steps(out, procs, steps: int = 3) -> None:
    feed, deadline = out / f"metrics_{NAME}.jsonl", time.monotonic() + 300
    while time.monotonic() < deadline and all(p.poll() is None for p in procs):
        if feed.exists() and sum(line["event"] == "step" for line in read_feed(str(feed))) >= steps:
            return
        time.sleep(0.05)
    for p in procs:
        p.kill()
    raise AssertionError("the ranks did not start training: " + " | ".join(p.communicate()[1][-500:] for p in procs))


def _errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("Error:")]


@pytest.mark.parametrize("victim, how, says", [(1, signal.SIGKILL, "lost rank 1"), (0, signal.SIGKILL, "lost rank 0"),
                                               (1, signal.SIGSTOP, "rank 1 did not answer within 10 s")])
def test_a_lost_rank_stops_the_other_with_one_line(odd_data, tmp_path, victim, how, says):
    out = tmp_path / "out"
    procs = _start_ranks(odd_data, out, timeout=10)
    _wait_for_steps(out, procs)
    procs[victim].send_signal(how)  # killed, or stalled (stopped) so that only the timeout can tell
    lost_at = time.monotonic()
    survivor = procs[1 - victim]
    try:
        _, err = survivor.communicate(timeout=60)  # never a hang
    finally:
        procs[victim].kill()
        procs[victim].communicate()
    assert time.monotonic() - lost_at < 30
    assert survivor.returncode == 1, err[-2000:]
    assert "Traceback" not in err
    errors = _errors(err)
    assert len(errors) == 1 and says in errors[0], err[-2000:]


def test_sigterm_to_one_rank_stops_both_after_one_save(odd_data, tmp_path):
    out = tmp_path / "out"
    procs = _start_ranks(odd_data, out, timeout=60)
    _wait_for_steps(out, procs)
    procs[1].send_signal(signal.SIGTERM)  # the rank that does not write
    results = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [128 + signal.SIGTERM] * 2, results[0][1][-2000:]
    (_, err0), (_, err1) = results
    assert "Traceback" not in err0 + err1
    [line0], [line1] = _errors(err0), _errors(err1)
    assert "stopped by SIGTERM" in line0 and "--resume" in line0 and "rank 0 saved" in line1
    steps = [int(re.search(r"step (\d+)", line).group(1)) for line in (line0, line1)]
    ckpt = load_checkpoint(str(out / f"checkpoint_{NAME}.pth.tar"))
    assert steps[0] == steps[1] == ckpt["step"]  # both stopped after the step rank 0 saved


def test_shares_pad_by_repeating_so_every_rank_gets_as_many():
    from capcli.runtime.distributed import DistInfo, my_batches, padded_share, rounds

    order = list(range(49))
    shares = [padded_share(order, DistInfo(rank, 2)) for rank in range(2)]
    assert [len(share) for share in shares] == [25, 25]
    assert sorted(shares[0] + shares[1]) == [0, *order]  # every image, the first one twice
    assert [padded_share([7], DistInfo(rank, 3)) for rank in range(3)] == [[7], [7], [7]]
    assert [list(my_batches(5, DistInfo(rank, 2))) for rank in range(2)] == [[0, 2, 4], [1, 3]]
    assert rounds(5, DistInfo(0, 2)) == 3


@pytest.mark.parametrize("value", ["soon", "0", "-5", "inf"])
def test_a_bad_timeout_is_one_line(monkeypatch, value):
    from capcli.errors import CapcliError
    from capcli.runtime.distributed import TIMEOUT_VARIABLE, dist_timeout

    monkeypatch.setenv(TIMEOUT_VARIABLE, value)
    with pytest.raises(CapcliError, match=TIMEOUT_VARIABLE):
        dist_timeout()
    monkeypatch.setenv(TIMEOUT_VARIABLE, "2.5")
    assert dist_timeout() == 2.5
