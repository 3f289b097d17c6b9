"""The typed checkpoint and the file names: a round trip through the file layout, one sentence
per missing or malformed field, and every run name recovered from its file name."""

from __future__ import annotations

import math
from dataclasses import asdict

import pytest
import torch

from capcli import paths
from capcli.config import A2CConfig, ModelConfig, TrainConfig
from capcli.errors import CheckpointError
from capcli.store.checkpoint import A2CState, Checkpoint, DataRef, TrainState, load_checkpoint
from capcli.store.epochs import EpochRecord, record
from capcli.store.fields import options_from
from capcli.store.files import read_checkpoint, save_checkpoint

WORD_MAP = {"<pad>": 0, "<unk>": 1, "<start>": 2, "<end>": 3, "dog": 4}


def _train_checkpoint() -> Checkpoint:
    state = TrainState(epoch=2, step=20, epoch_step=0, best_epoch=1, best_bleu4=0.25, since_improvement=1,
                       epochs=[record(1, 0.25, 0.5, train_loss=3.0), record(2, 0.2, 0.4, train_loss=2.5)])
    return Checkpoint("train", ModelConfig(vocab_size=5, encoder="resnet18"), dict(WORD_MAP),
                      {"w": torch.ones(2)}, {"v": torch.zeros(3)}, state, 64, 20, DataRef("data", "shapes_5_1"),
                      train_config=TrainConfig(epochs=9), decoder_optimizer={"state": {}, "param_groups": []},
                      scaler={}, saved_at=1.5)


def test_a_saved_checkpoint_reads_back_field_for_field(tmp_path):
    path = str(tmp_path / "checkpoint_shapes_5_1.pth.tar")
    written = _train_checkpoint()
    save_checkpoint(path, written)
    raw = load_checkpoint(path)
    assert raw["format"] == "capcli-checkpoint" and raw["version"] == 2
    assert raw["epoch"] == 2 and raw["best_bleu4"] == 0.25 and raw["train_config"]["epochs"] == 9  # the flat layout
    read = read_checkpoint(path)
    assert read.state == written.state and read.model_config == written.model_config
    assert read.train_config == written.train_config and read.a2c_config is None
    assert read.data == DataRef("data", "shapes_5_1") and (read.image_size, read.max_len) == (64, 20)
    assert torch.equal(read.encoder["w"], written.encoder["w"]) and read.word_map == WORD_MAP
    assert read.path == path and not read.malformed
    read.check_resumable("train")
    with pytest.raises(CheckpointError, match=r"cannot resume A2C from it \(missing critic, actor_optimizer"):
        read.check_resumable("a2c")


def test_an_a2c_checkpoint_keeps_its_state_and_options():
    raw = _train_checkpoint().to_dict()
    raw.update(stage="a2c", a2c_config={**asdict(A2CConfig(reward="bleu4")), "gone_option": 1},
               critic={}, actor_optimizer={}, critic_optimizer={}, best_score=0.5,
               epochs=[{"epoch": 1, "val_bleu4": 0.3, "reward": 0.2}])
    read = Checkpoint.from_dict("a2c.pth.tar", raw)
    assert isinstance(read.state, A2CState) and read.state.best_score == 0.5
    assert read.state.epochs == [EpochRecord(1, 0.3, None, (("reward", 0.2),))]
    assert read.a2c_config.reward == "bleu4"  # an option this capcli no longer has is left out
    read.check_resumable("a2c")
    with pytest.raises(CheckpointError, match="a a2c checkpoint; `capcli train` continues training"):
        read.check_resumable("train")


def test_a_checkpoint_without_run_state_still_captions_but_does_not_resume():
    raw = {k: v for k, v in _train_checkpoint().to_dict().items()
           if k in ("model_config", "encoder", "decoder", "word_map")}  # the oldest layout: no state, no kind
    read = Checkpoint.from_dict("old.pth.tar", raw)
    assert read.stage == "train" and read.state == TrainState() and (read.image_size, read.max_len) == (256, 50)
    with pytest.raises(CheckpointError, match=r"old.pth.tar: cannot resume training from it \(missing epoch, step"):
        read.check_resumable("train")
    assert math.isinf(A2CState().best_score)


@pytest.mark.parametrize("edit, words", [
    (lambda c: c.pop("word_map"), "not a captioning model checkpoint (missing word_map)"),
    (lambda c: c.update(image_size="big"), "image_size is 'big', not a positive whole number"),
    (lambda c: c.update(stage=3), "stage is 3, expected train or a2c"),
    (lambda c: c["model_config"].update(dropout=2.0), "model_config field dropout is 2.0"),
    (lambda c: c["word_map"].update(cat=99), "word map entry 'cat': 99 is not a word with an id below"),
])
def test_a_bad_field_is_named(edit, words):
    raw = _train_checkpoint().to_dict()
    raw["model_config"], raw["word_map"] = dict(raw["model_config"]), dict(raw["word_map"])
    edit(raw)
    with pytest.raises(CheckpointError) as error:
        Checkpoint.from_dict("edited.pth.tar", raw)
    assert str(error.value).startswith("edited.pth.tar: ") and words in str(error.value)


@pytest.mark.parametrize("edit, words", [
    (lambda c: c.update(epoch=-1), "epoch is not a count"),
    (lambda c: c.update(epochs="none"), "epochs is not a list"),
    (lambda c: c.update(epochs=[{"val_bleu4": 0.3}]), "epochs holds an entry without an epoch number"),
    (lambda c: c.update(decoder_optimizer=[1]), "decoder_optimizer is not a state dict"),
    (lambda c: c.update(decoder_optimizer=None), "missing decoder_optimizer"),
])
def test_a_bad_run_state_field_is_named_when_resuming(edit, words):
    raw = _train_checkpoint().to_dict()
    edit(raw)
    read = Checkpoint.from_dict("edited.pth.tar", raw)  # still a model: caption and evaluate use it
    with pytest.raises(CheckpointError, match="cannot resume training from it") as error:
        read.check_resumable("train")
    assert words in str(error.value)


def test_every_run_file_name_leads_back_to_its_run(tmp_path):
    for name in ("shapes_5_5", "flickr8k_5_cap_per_img_5_min_word_freq", "a.b_1_2"):
        train, a2c = paths.train_files(str(tmp_path), name), paths.a2c_files(str(tmp_path), name)
        assert train.feed == a2c.feed and train.lock == a2c.lock == str(tmp_path / f"{name}.lock")
        assert paths.run_name_of_feed(train.feed) == name
        assert paths.checkpoint_stem(a2c.best) == f"BEST_A2C_{name}" and paths.is_best(a2c.best)
        for file in (train.checkpoint, train.best, a2c.checkpoint, a2c.best, train.feed):
            open(file, "w").close()
    assert list(paths.run_feeds(str(tmp_path))) == sorted(["shapes_5_5", "flickr8k_5_cap_per_img_5_min_word_freq",
                                                           "a.b_1_2"])
    assert len(paths.best_checkpoints(str(tmp_path))) == 6 and len(paths.checkpoint_files(str(tmp_path))) == 12
    assert paths.data_file("d", "shapes_5_5", "IMAGES", "VAL") == "d/VAL_IMAGES_shapes_5_5.hdf5"
    assert paths.name_candidates("flickr8k_5_5")[1] == "flickr8k_5_cap_per_img_5_min_word_freq"


def test_a_saved_config_from_before_data_name_keeps_its_data_set():
    """Before 0.2 the configs called the data set `name` (the option was --name)."""
    saved = {k: v for k, v in asdict(TrainConfig(epochs=3)).items() if k != "data_name"}
    assert options_from(TrainConfig, {**saved, "name": "coco_5_3"}).data_name == "coco_5_3"
    assert options_from(A2CConfig, {"name": "f8k", "data_name": "f30k"}).data_name == "f30k"
