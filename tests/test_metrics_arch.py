"""`capcli metrics` on a real run's feed (summary, charts, partial and growing files, PNGs) and
`capcli arch` (parameter counts and shapes against the model itself)."""

from __future__ import annotations

import json
import shutil
import sys
import threading
import time

import pytest
import torch

from capcli.config import ModelConfig
from capcli.model.captioner import build_model
from capcli.runs.summary import summarize
from tests.test_train import TINY

NAME = "shapes_5_1"


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory):
    """A real 3-epoch run on a tiny shapes set (its feed is what the tests read)."""
    from click.testing import CliRunner

    from capcli.cli.commands import cli
    from capcli.config import PrepConfig
    from capcli.data.prep import run_prep

    root = tmp_path_factory.mktemp("metrics")
    run_prep(PrepConfig(output_folder=str(root / "data"), num_images=40, image_size=32, min_word_freq=1))
    args = ("train", "--data-folder", root / "data", "--output-folder", root / "out", *TINY, "--epochs", 3,
            "--patience-lr", 1, "--lr-decay", 0.5)
    result = CliRunner().invoke(cli, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return root / "out"


def _lines(path):
    return [json.loads(line) for line in open(path)]


def test_summary_matches_an_independent_computation(run_folder, run):
    result = run("metrics", "--output-folder", run_folder)
    assert result.exit_code == 0, result.output
    lines = _lines(run_folder / f"metrics_{NAME}.jsonl")
    val = [x for x in lines if x["event"] == "epoch" and x["split"] == "val"]
    train = [x for x in lines if x["event"] == "epoch" and x["split"] == "train"]
    best = max(val, key=lambda x: x["bleu4"])
    s = summarize(lines)
    assert s.epochs_done == 3 == len(val)
    assert s.best_bleu4 == best["bleu4"] and s.best_epoch == best["epoch"]
    assert s.last["train_loss"] == train[-1]["loss"] and s.last["val_top5"] == val[-1]["top5"]
    durations = [val[0]["time"] - lines[0]["time"]] + [b["time"] - a["time"] for a, b in zip(val, val[1:])]
    assert s.mean_epoch_seconds == pytest.approx(sum(durations) / 3)
    expected_changes = [(b["epoch"], b["lr"]) for a, b in zip(val, val[1:]) if b["lr"] != a["lr"]]
    assert s.lr_changes == expected_changes
    assert s.ended == "completed"
    assert lines[0]["event"] == "start" and lines[0]["epochs"] == 3 and s.total_epochs == {"train": 3}
    out = result.stdout
    assert "3 of 3  (last step" in out
    assert f"{best['bleu4']:.4f} at epoch {best['epoch']}" in out
    assert f"{train[-1]['loss']:.4f}" in out and "ended (completed)" in out
    for title in ("Loss", "Top-5 accuracy", "Validation BLEU-4"):
        assert title in out
    assert "train" in out and "val" in out and "epoch" in out and "┤" in out  # labels and axes
    assert "\x1b[" not in result.output  # not a terminal: no ANSI escape codes
    assert "A2C reward" not in out  # no a2c lines in this run


def test_half_written_and_growing_files(run_folder, run, tmp_path):
    folder = tmp_path / "live"
    folder.mkdir()
    feed = folder / f"metrics_{NAME}.jsonl"
    text = open(run_folder / f"metrics_{NAME}.jsonl").read()
    complete, half = text[: text.rindex("\n", 0, len(text) - 1) + 1], text[text.rindex("\n", 0, len(text) - 1) + 1:]
    feed.write_text(complete + half[: len(half) // 2])  # the last line cut in the middle
    result = run("metrics", "--output-folder", folder, "--no-charts")
    assert result.exit_code == 0, result.output
    assert f"{len(complete.splitlines())} lines" in result.stdout
    # another writer appends while metrics reads, again and again
    feed.write_text("")
    stop = threading.Event()

    def writer():
        with open(feed, "a") as f:
            while not stop.is_set():
                for line in text.splitlines(keepends=True):
                    f.write(line[:10])
                    f.flush()
                    f.write(line[10:])
                    f.flush()
                time.sleep(0.001)

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        for _ in range(15):
            result = run("metrics", "--output-folder", folder)
            assert result.exit_code == 0, result.output
            assert "Traceback" not in result.output
    finally:
        stop.set()
        thread.join()


def test_save_png_and_missing_matplotlib(run_folder, run, tmp_path, monkeypatch):
    folder = tmp_path / "pngs"
    shutil.copytree(run_folder, folder)
    result = run("metrics", "--output-folder", folder, "--save-png", "--no-charts")
    assert result.exit_code == 0, result.output
    for stem in ("loss_plot", "accuracy_plot", "bleu_scores", "training_visualization"):
        png = folder / f"{stem}_{NAME}.png"
        assert png.exists() and png.read_bytes()[:4] == b"\x89PNG"
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if the extra were not installed
    result = run("metrics", "--output-folder", folder, "--save-png", "--no-charts")
    assert result.exit_code == 1 and "capcli[plots]" in result.output


def test_missing_folder_and_unknown_name(run_folder, run, tmp_path):
    result = run("metrics", "--output-folder", tmp_path / "nope")
    assert result.exit_code == 1 and "no such run folder" in result.output
    result = run("metrics", "--output-folder", run_folder, "--run-name", "flickr8k_5_5")
    assert result.exit_code == 1 and NAME in result.output  # lists the runs that exist
    assert len(result.output.strip().splitlines()) == 1


def _numel(module, trainable):
    return sum(p.numel() for p in module.parameters() if p.requires_grad == trainable)


@pytest.mark.parametrize("decoder", ["attention", "plain"])
@pytest.mark.parametrize("fine_tune", [False, True])
def test_arch_counts_and_shapes(run, decoder, fine_tune):
    args = ["arch", "--encoder", "resnet18", "--decoder", decoder, "--vocab-size", 40, "--image-size", 64,
            "--embed-dim", 32, "--attention-dim", 24, "--decoder-dim", 48]
    result = run(*args, *(["--fine-tune-encoder"] if fine_tune else []))
    assert result.exit_code == 0, result.output
    encoder, dec = build_model(ModelConfig(vocab_size=40, encoder="resnet18", decoder=decoder, embed_dim=32,
                                           attention_dim=24, decoder_dim=48))
    encoder.set_fine_tune(fine_tune)
    table = {line.split()[0]: [int(v.replace(",", "")) for v in line.split()[1:]]
             for line in result.stdout.splitlines()
             if line.split()[:1] in (["encoder"], ["attention"], ["decoder"], ["total"]) and len(line.split()) == 4}
    enc_counts = [_numel(encoder, True) + _numel(encoder, False), _numel(encoder, True), _numel(encoder, False)]
    assert table["encoder"] == enc_counts
    assert (enc_counts[1] > 0) == fine_tune
    attention = dec.attention if decoder == "attention" else torch.nn.Module()
    assert table["attention"][0] == sum(p.numel() for p in attention.parameters())
    total = sum(p.numel() for p in encoder.parameters()) + sum(p.numel() for p in dec.parameters())
    assert table["total"] == [total, _numel(encoder, True) + _numel(dec, True), _numel(encoder, False)]
    # printed shapes match a forward pass
    features = encoder(torch.rand(1, 3, 64, 64))
    pool_line = next(line for line in result.stdout.splitlines() if line.split()[1:2] == ["pool"])
    assert pool_line.split()[3] == "×".join(map(str, features.permute(0, 3, 1, 2).shape))
    fc_line = next(line for line in result.stdout.splitlines() if line.split()[1:2] == ["fc"])
    assert fc_line.split()[3] == "1×40"


def test_arch_from_checkpoint_and_graph_message(run_folder, run, monkeypatch):
    result = run("arch", "-m", run_folder / f"BEST_{NAME}.pth.tar")
    assert result.exit_code == 0, result.output
    assert "resnet18 encoder (frozen)" in result.stdout and "32×32" in result.stdout
    # the old option name still works, says what replaced it, and prints the same report
    old = run("arch", "--checkpoint", run_folder / f"BEST_{NAME}.pth.tar")
    assert old.exit_code == 0 and old.stdout == result.stdout
    assert "deprecated" in old.stderr and "-m/--model" in old.stderr
    both = run("arch", "-m", run_folder / f"BEST_{NAME}.pth.tar", "--checkpoint", run_folder / "other.pth.tar")
    assert both.exit_code == 2 and "give -m/--model only" in both.output
    monkeypatch.setitem(sys.modules, "torchviz", None)
    result = run("arch", "--encoder", "resnet18", "--vocab-size", 10, "--image-size", 32, "--graph",
                 run_folder / "g.png")
    assert result.exit_code == 1 and "pip install 'capcli[graph]'" in result.output
