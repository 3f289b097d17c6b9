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
from capcli.store.checkpoint import A2CState, TrainState
from capcli.store.epochs import EpochRecord, best_record, epoch_records
from capcli.store.files import read_checkpoint, save_checkpoint
from capcli.store.sidecar import best_scores, read_meta

OLD = Path(__file__).resolve().parent / "fixtures" / "before_redesign" / "out" / "checkpoint_shapes_5_1.pth.tar"
# three epochs; CIDEr-D measured from the second on; the second was the best
BEFORE_CIDER = TrainState(epoch=3, step=30, best_epoch=2, best_bleu4=0.25, bleu_history=[0.2, 0.25, 0.24],
                          history={"val_cider_d": [0.7, 0.6]}, best_score=0.25)
A2C = A2CState(epoch=2, step=8, best_epoch=1, best_score=0.9,
               history=[{"epoch": 1, "val_bleu4": 0.3, "val_cider_d": 0.9}, {"epoch": 2, "val_bleu4": 0.31,
                                                                            "val_cider_d": 0.8}])


def test_a_training_state_from_before_cider_d_lines_its_figures_up_by_epoch():
    records = epoch_records(BEFORE_CIDER)
    assert records == [EpochRecord(1, 0.2, None), EpochRecord(2, 0.25, 0.7), EpochRecord(3, 0.24, 0.6)]
    assert best_record(records, 2) == EpochRecord(2, 0.25, 0.7)
    assert best_record(records, 0) is None and best_record(records, 9) is None


def test_an_a2c_state_gives_the_same_records():
    assert epoch_records(A2C) == [EpochRecord(1, 0.3, 0.9), EpochRecord(2, 0.31, 0.8)]
    assert epoch_records(TrainState(bleu_history=[float("nan")], epoch=1)) == [EpochRecord(1, None, None)]


@pytest.mark.parametrize("stage, state, bleu, cider", [("train", BEFORE_CIDER, 0.25, 0.7), ("a2c", A2C, 0.3, 0.9)])
def test_sidecar_dashboard_row_and_bundle_show_the_best_epochs_own_scores(tmp_path, stage, state, bleu, cider):
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
    assert epoch_records(back.state) == epoch_records(state)
    assert best_scores(back) == best_scores(read_checkpoint(path))
