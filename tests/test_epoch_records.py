"""One record of epochs (issue 28): the sidecar, the dashboard's checkpoint row and the bundle read
a checkpoint's epochs the same way, old layouts included (a run from before CIDEr-D was measured
has fewer CIDEr-D figures than epochs: the later epochs')."""

import dataclasses
import os
from pathlib import Path

import pytest

from capcli.dashboard.checkpoints import read_checkpoint_info
from capcli.paths import checkpoint_meta_file
from capcli.store.bundle import export_bundle
from capcli.store.checkpoint import A2CState, Checkpoint, TrainState
from capcli.store.epochs import EpochRecord, best, figure_lists, record
from capcli.store.files import read_checkpoint, save_checkpoint
from capcli.store.sidecar import best_scores, read_meta

OLD = Path(__file__).resolve().parent / "fixtures" / "before_redesign" / "out" / "checkpoint_shapes_5_1.pth.tar"
# three epochs; CIDEr-D measured from the second on; the second was the best, in the old layouts
BEFORE_CIDER = {"epoch": 3, "step": 30, "best_epoch": 2, "best_bleu4": 0.25, "bleu_history": [0.2, 0.25, 0.24],
                "history": {"val_cider_d": [0.7, 0.6], "train_loss": [3.0, 2.5, 2.4]}, "best_score": 0.25}
A2C = {"epoch": 2, "step": 8, "best_epoch": 1, "best_score": 0.9,
       "history": [{"epoch": 1, "val_bleu4": 0.3, "val_cider_d": 0.9, "reward": 0.5},
                   {"epoch": 2, "val_bleu4": 0.31, "val_cider_d": 0.8, "reward": 0.6}]}


def _state(stage: str, old: dict) -> TrainState | A2CState:
    """The run state of a checkpoint saved in the old layout ``old``, as read today."""
    raw = {**dataclasses.replace(read_checkpoint(str(OLD)), stage=stage).to_dict(), **old, "kind": stage}
    del raw["epochs"], raw["stage"]  # format version 1: the stage was "kind", the epochs lists
    return Checkpoint.from_dict("old.pth.tar", raw).state


def test_a_training_state_from_before_cider_d_lines_its_figures_up_by_epoch():
    records = _state("train", BEFORE_CIDER).epochs
    assert records == [EpochRecord(1, 0.2, None, (("train_loss", 3.0),)),
                       EpochRecord(2, 0.25, 0.7, (("train_loss", 2.5),)),
                       EpochRecord(3, 0.24, 0.6, (("train_loss", 2.4),))]
    assert best(records, "bleu4").epoch == 2 and best(records, "cider").epoch == 2
    assert best([], "bleu4") is None and best([EpochRecord(1)], "cider") is None
    assert figure_lists(records) == {"train_loss": [3.0, 2.5, 2.4], "val_cider_d": [0.7, 0.6]}


def test_an_a2c_state_gives_the_same_records():
    assert _state("a2c", A2C).epochs == [EpochRecord(1, 0.3, 0.9, (("reward", 0.5),)),
                                         EpochRecord(2, 0.31, 0.8, (("reward", 0.6),))]
    assert record(1, float("nan"), 0.5, reward=float("inf")) == EpochRecord(1, None, 0.5, (("reward", None),))


def test_the_first_of_equal_scores_is_best_and_a_record_reads_back():
    records = [record(1, 0.2, 0.5), record(2, 0.3, 0.5), record(3, 0.3, 0.4, train_loss=2.0)]
    assert best(records, "bleu4").epoch == 2 and best(records, "cider").epoch == 1
    assert [EpochRecord.from_dict(r.as_dict()) for r in records] == records
    assert EpochRecord.from_dict({"epoch": True}) is None and EpochRecord.from_dict([1]) is None


def test_the_fixture_from_before_the_redesign_reads_its_epochs():
    ckpt = read_checkpoint(str(OLD))
    assert [r.epoch for r in ckpt.state.epochs] == list(range(1, ckpt.state.epoch + 1))
    assert best(ckpt.state.epochs, "bleu4").epoch == ckpt.state.best_epoch
    assert all(r.figure("train_loss") is not None for r in ckpt.state.epochs)


@pytest.mark.parametrize("stage, old, bleu, cider", [("train", BEFORE_CIDER, 0.25, 0.7), ("a2c", A2C, 0.3, 0.9)])
def test_sidecar_dashboard_row_and_bundle_show_the_best_epochs_own_scores(tmp_path, stage, old, bleu, cider):
    state = _state(stage, old)
    ckpt = dataclasses.replace(read_checkpoint(str(OLD)), stage=stage, state=state)
    path = str(tmp_path / f"checkpoint_{stage}.pth.tar")
    save_checkpoint(path, ckpt, run="shapes_5_1")
    meta = read_meta(path)
    assert (meta["best_epoch"], meta["best_bleu4"], meta["best_cider_d"]) == (state.best_epoch, bleu, cider)
    os.remove(checkpoint_meta_file(path))  # the dashboard reads the checkpoint itself, as for an old one
    row = read_checkpoint_info(path, 0.0)
    assert not row.from_sidecar and (row.best_bleu4, row.best_cider_d) == (bleu, cider)
    bundle = export_bundle(path).bundle
    back = read_checkpoint(bundle)
    assert [(r.epoch, r.val_bleu4, r.val_cider_d) for r in back.state.epochs] == \
        [(r.epoch, r.val_bleu4, r.val_cider_d) for r in state.epochs]
    assert best_scores(back) == best_scores(read_checkpoint(path))
