"""``capcli train --monitor bleu4|cider``: the score that picks BEST, decays the learning rate and
stops early; validation measures both, the feed, the epoch line, the summary and the charts carry
both; the checkpoint keeps the monitor and a resumed run keeps it; old checkpoints and feeds still work."""

from __future__ import annotations

import json

import pytest

from capcli.config import ModelConfig, TrainConfig
from capcli.runs.feed import read_feed
from capcli.runs.metrics import CHARTS, summary_text
from capcli.runs.summary import summarize
from capcli.store.checkpoint import Checkpoint, TrainState
from capcli.store.epochs import record
from capcli.store.files import read_checkpoint
from capcli.store.sidecar import best_figures
from capcli.training.selection import record_epoch
from tests.conftest import TINY_TRAIN

NAME = "shapes_5_1"
WORD_MAP = {"<pad>": 0, "<unk>": 1, "<start>": 2, "<end>": 3, "dog": 4}


@pytest.mark.parametrize("monitor, best", [("bleu4", 2), ("cider", 1)])
def test_the_monitored_score_picks_the_best_epoch(monitor, best):
    state = TrainState()
    # (BLEU-4, CIDEr-D) per epoch: BLEU-4 peaks at epoch 2, CIDEr-D at epoch 1
    improved = [record_epoch(state, monitor, e, (3.0, 50.0), (2.0, 60.0, b, c))
                for e, (b, c) in enumerate([(0.1, 0.9), (0.3, 0.5), (0.2, 0.4)])]
    assert improved == [True, best == 2, False]
    assert state.best_epoch == best and state.best_bleu4 == [0.1, 0.3][best - 1]
    assert state.best_score == ([0.1, 0.3][best - 1] if monitor == "bleu4" else 0.9)
    assert [(r.val_bleu4, r.val_cider_d) for r in state.epochs] == [(0.1, 0.9), (0.3, 0.5), (0.2, 0.4)]
    assert state.epochs[0].figure("train_loss") == 3.0 and state.epochs[2].figure("val_top5") == 60.0
    state.epoch = 3
    assert best_figures(state, monitor) == {"bleu4": state.best_bleu4, "cider_d": [0.9, 0.5][best - 1],
                                            "monitor": monitor, "best_score": state.best_score}


def test_a_checkpoint_from_before_monitor_resumes_on_bleu4():
    state = TrainState(epoch=2, step=20, best_epoch=1, best_bleu4=0.25, since_improvement=1,
                       epochs=[record(1, 0.25, None, train_loss=3.0), record(2, 0.2, None, train_loss=2.5)])
    raw = Checkpoint("train", ModelConfig(vocab_size=5, encoder="resnet18"), dict(WORD_MAP), {}, {}, state,
                     train_config=TrainConfig(epochs=9), decoder_optimizer={"state": {}, "param_groups": []},
                     scaler={}).to_dict()
    del raw["best_score"]
    del raw["train_config"]["monitor"]
    read = Checkpoint.from_dict("old.pth.tar", raw)
    read.check_resumable("train")  # no "missing best_score"
    assert read.state.best_score == 0.25 and read.train_config.monitor == "bleu4"
    state.epoch = 2
    assert best_figures(read.state, "bleu4")["cider_d"] is None  # no CIDEr-D measured then


def test_summary_follows_the_runs_own_choice_and_reads_old_feeds():
    def val(epoch, bleu4, cider, improved, **extra):
        return {"time": 10.0 * epoch, "stage": "train", "event": "epoch", "split": "val", "epoch": epoch,
                "step": epoch, "loss": 2.0, "top5": 50.0, "bleu4": bleu4, "lr": 1e-3, "improved": improved,
                **({"cider_d": cider} if cider is not None else {}), **extra}

    lines = [val(1, 0.1, 0.9, True, monitor="cider"), val(2, 0.3, 0.5, False, monitor="cider")]
    s = summarize(lines)
    assert (s.monitor, s.best_epoch, s.best_bleu4, s.best_cider_d) == ("cider", 1, 0.1, 0.9)
    assert s.series["cider_d"] == [(1, 0.9), (2, 0.5)]
    assert "best val CIDEr-D (monitor)  0.9000 at epoch 1 (BLEU-4 0.1000)" in summary_text(NAME, "f", s)
    old = [val(1, 0.1, None, True), val(2, 0.3, None, True), val(3, 0.2, None, False)]  # before CIDEr-D
    s = summarize(old)
    assert (s.monitor, s.best_epoch, s.best_bleu4, s.best_cider_d) == ("bleu4", 2, 0.3, None)
    assert "best val BLEU-4" in summary_text(NAME, "f", s) and "cider_d" not in s.series
    assert "Validation CIDEr-D" in [title for title, _, _ in CHARTS]


def _train(run, data, out, *extra):
    return run("train", "--data-folder", data, "--output-folder", out, *TINY_TRAIN, *extra)


def test_train_on_cider_and_resume_keeps_it(data, tmp_path, run):
    out = tmp_path / "out"
    result = _train(run, data, out, "--epochs", 2, "--monitor", "cider")
    assert result.exit_code == 0, result.output
    assert "CIDEr-D" in result.output and "BLEU-4" in result.output  # the epoch lines carry both
    assert "best validation CIDEr-D" in result.output
    ckpt = read_checkpoint(str(out / f"checkpoint_{NAME}.pth.tar"))
    assert ckpt.train_config.monitor == "cider"
    ciders = [r.val_cider_d for r in ckpt.state.epochs]
    assert len(ciders) == 2 and ckpt.state.best_score == ciders[ckpt.state.best_epoch - 1]
    vals = [x for x in read_feed(str(out / f"metrics_{NAME}.jsonl")) if x["event"] == "epoch" and x["split"] == "val"]
    assert [x["cider_d"] for x in vals] == ciders and all(x["monitor"] == "cider" for x in vals)
    assert [x["improved"] for x in vals] == [True, ciders[1] > ciders[0]]
    best = read_checkpoint(str(out / f"BEST_{NAME}.pth.tar"))
    assert best.state.epoch == ckpt.state.best_epoch
    result = _train(run, data, out, "--epochs", 3, "--resume", "--monitor", "bleu4")
    assert result.exit_code == 1 and "--monitor bleu4 conflicts" in result.output
    result = _train(run, data, out, "--epochs", 3, "--resume")  # no --monitor: the run's own
    assert result.exit_code == 0, result.output
    assert read_checkpoint(str(out / f"checkpoint_{NAME}.pth.tar")).train_config.monitor == "cider"
    lines = read_feed(str(out / f"metrics_{NAME}.jsonl"))
    assert [x["monitor"] for x in lines if x["event"] == "epoch" and x["split"] == "val"] == ["cider"] * 3
    end = [x for x in lines if x["event"] == "end"][-1]
    assert end["monitor"] == "cider" and end["best_score"] == read_checkpoint(
        str(out / f"checkpoint_{NAME}.pth.tar")).state.best_score
    summary = json.load(open(out / f"training_metrics_{NAME}.json"))
    assert len(summary["val_cider_d"]) == 3


def test_early_stopping_and_decay_follow_the_monitor(data, tmp_path, run, monkeypatch):
    """CIDEr-D that never improves after epoch 1 (BLEU-4 that always does): with --monitor cider
    the learning rate halves each epoch and the run stops after --patience-stop epochs."""
    from capcli.training.train import Trainer

    scores = iter([(0.1, 2.0), (0.2, 1.0), (0.3, 0.5), (0.4, 0.2)])

    def validate(self):
        bleu4, cider = next(scores)
        return 2.0, 50.0, bleu4, cider

    monkeypatch.setattr(Trainer, "validate", validate)
    out = tmp_path / "out"
    result = _train(run, data, out, "--epochs", 4, "--monitor", "cider", "--patience-lr", 1, "--lr-decay", 0.5,
                    "--patience-stop", 2, "--decoder-lr", 1e-3)
    assert result.exit_code == 0, result.output
    assert "no CIDEr-D gain for 2 epochs" in result.output
    vals = [x for x in read_feed(str(out / f"metrics_{NAME}.jsonl")) if x["event"] == "epoch" and x["split"] == "val"]
    assert [x["improved"] for x in vals] == [True, False, False]
    assert [x["lr"] for x in vals] == pytest.approx([1e-3, 5e-4, 2.5e-4])
