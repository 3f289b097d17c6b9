"""Object pretraining (capcli.training.concepts) and --captions-per-step: targets from the generator's record,
a loss that falls, the trainer running it once on a new run only, and the caption sampling."""

import os

import pytest
import torch

from capcli.config import TrainConfig
from capcli.data.datasets import pick_captions
from capcli.data.hdf5 import find_prepared
from capcli.errors import InputError
from capcli.evaluation import content
from capcli.model.encoder import Encoder
from capcli.runtime.device import resolve_precision
from capcli.training.concepts import object_targets, pretrain_encoder
from capcli.training.samples import image_names


def test_targets_are_the_kinds_of_object_each_training_image_holds(data):
    prepared = find_prepared(str(data), None)
    kinds, targets = object_targets(prepared)
    assert len(kinds) == 24 and kinds[0] == ("red", "circle") and targets.shape == (32, 24)
    drawn = content.drawn_objects(os.path.join(str(data), "shapes", "dataset_shapes.json"))
    for i, name in enumerate(image_names(prepared, "TRAIN", 32)):
        expected = {(colour, shape) for _, colour, shape in drawn[name]}
        assert {kinds[k] for k in range(24) if targets[i, k]} == expected


def test_other_data_sets_are_refused_in_one_line(tmp_path, data):
    import shutil

    copy = tmp_path / "data"
    shutil.copytree(data, copy)
    (copy / "shapes" / "dataset_shapes.json").unlink()
    with pytest.raises(InputError, match="--concept-epochs needs the shapes set's record"):
        object_targets(find_prepared(str(copy), None))


def test_pick_captions_takes_k_different_captions_of_each_image():
    captions = torch.arange(2 * 5 * 3).view(2, 5, 3)
    lengths = torch.arange(10).view(2, 5) + 100
    torch.manual_seed(0)
    rows, lens = pick_captions(captions, lengths, 2)
    assert rows.shape == (2, 2, 3) and lens.shape == (2, 2)
    for image in range(2):
        picked = [int(r[0]) // 3 - image * 5 for r in rows[image]]
        assert len(set(picked)) == 2 and all(0 <= p < 5 for p in picked)
        assert lens[image].tolist() == [100 + image * 5 + p for p in picked]  # each length stays with its row
    assert pick_captions(captions, lengths, 5)[0] is captions


def test_pretraining_lowers_the_concept_loss(data):
    prepared = find_prepared(str(data), None)
    torch.manual_seed(0)
    encoder = Encoder("resnet-small", encoded_size=2)
    encoder.set_fine_tune(True)
    precision = resolve_precision("fp32", torch.device("cpu"))
    config = TrainConfig(concept_epochs=1, concept_lr=2e-3, seed=1)
    first = pretrain_encoder(encoder, prepared, config, torch.device("cpu"), precision)
    later = pretrain_encoder(encoder, prepared, TrainConfig(concept_epochs=6, seed=1), torch.device("cpu"), precision)
    assert later < first * 0.8


def test_a_new_run_pretrains_the_encoder_once_and_a_resume_does_not(data, run, tmp_path):
    args = ("train", "--data-folder", data, "--output-folder", tmp_path, "--encoder", "resnet-small",
            "--embed-dim", 16, "--attention-dim", 16, "--decoder-dim", 32, "--batch-size", 20,
            "--precision", "fp32", "--seed", 3, "--fine-tune-encoder", "--concept-epochs", 1,
            "--captions-per-step", 2)
    first = run(*args, "--epochs", 1)
    assert first.exit_code == 0, first.output
    assert first.output.count("concepts: 1 epoch(s) on the 24 kinds of object in 32 training images") == 1
    resumed = run(*args, "--epochs", 2, "--resume")
    assert resumed.exit_code == 0, resumed.output
    assert "concepts:" not in resumed.output and "epoch 2/2" in resumed.output
