"""One encoder of each family after ResNet (issue 29), end to end as a user runs them, offline: the
test saves the whole torchvision or open_clip model's (random) weights to a file, then prep → train
with the frozen encoder and the feature cache → --resume --fine-tune-encoder → caption -v →
evaluate → a2c for one epoch → export → caption from the bundle, on a tiny shapes set."""

import json

import pytest
import torch

from capcli.model.captioner import preprocess_for
from capcli.store.files import read_checkpoint

NAME = "shapes_5_1"
FAMILIES = ["convnext_tiny", "efficientnet_v2_s", "swin_t", "vit_b_32", "clip:ViT-B-32"]
SMALL_DECODER = ("--embed-dim", 16, "--attention-dim", 16, "--decoder-dim", 32, "--precision", "fp32")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """Ten 32-pixel shapes scenes: 8 to train on, 1 to validate, 1 to test."""
    from capcli.config import PrepConfig
    from capcli.data.prep import run_prep

    folder = tmp_path_factory.mktemp("tiny")
    run_prep(PrepConfig(output_folder=str(folder), num_images=10, image_size=32, min_word_freq=1, workers=1))
    return folder


def _weights_file(name: str, folder) -> str:
    """The whole model's weights, as torchvision or open_clip would give them (random here)."""
    torch.manual_seed(0)
    if name.startswith("clip:"):
        from capcli.model.clip import open_clip

        model = open_clip().create_model(name.split(":")[1], pretrained=None)
    else:
        from capcli.model.backbones import torchvision_model

        model = torchvision_model(name)
    path = folder / "weights.pth"
    torch.save(model.state_dict(), path)
    return str(path)


@pytest.mark.parametrize("name", FAMILIES)
def test_an_encoder_family_from_prep_to_a_bundle(name, tiny, tmp_path, run):
    out, weights = tmp_path / "out", _weights_file(name, tmp_path)
    common = ("--data-folder", tiny, "--output-folder", out, "--encoder", name, "--pretrained-weights", weights,
              "--batch-size", 8, *SMALL_DECODER)
    result = run("train", *common, "--epochs", 1, "--frozen-encoder")
    assert result.exit_code == 0, result.output
    assert len(list(tiny.glob(f"FEATURES_TRAIN_{NAME}_*.hdf5"))) >= 1  # the frozen encoder's cache
    result = run("train", "--data-folder", tiny, "--output-folder", out, "--resume", "--epochs", 2,
                 "--fine-tune-encoder", "--fine-tune-depth", 1, "--batch-size", 8, "--precision", "fp32")
    assert result.exit_code == 0, result.output
    ckpt = read_checkpoint(str(out / f"checkpoint_{NAME}.pth.tar"))
    assert ckpt.model_config.encoder == name and ckpt.model_config.preprocess == preprocess_for(name)
    assert ckpt.train_config.fine_tune_encoder and [r.epoch for r in ckpt.state.epochs] == [1, 2]
    image = next((tiny / "shapes" / "images").glob("*.jpg"))
    result = run("caption", image, "-m", out / f"BEST_{NAME}.pth.tar", "-v", "--beam-size", 2,
                 "--output-folder", out / "captions", "--precision", "fp32")
    assert result.exit_code == 0, result.output
    assert (out / "captions" / "attention_visualization.png").stat().st_size > 0
    result = run("evaluate", "--data-folder", tiny, "--output-folder", out, "--beams", 1, "--metrics", "bleu",
                 "--precision", "fp32")
    assert result.exit_code == 0, result.output
    result = run("a2c", "--checkpoint", out / f"BEST_{NAME}.pth.tar", "--data-folder", tiny, "--output-folder",
                 out, "--epochs", 1, "--batch-size", 8, "--precision", "fp32", "--freeze-encoder")
    assert result.exit_code == 0, result.output
    result = run("export", "-m", out / f"BEST_A2C_{NAME}.pth.tar", "-o", out / "bundle")
    assert result.exit_code == 0, result.output
    config = json.loads((out / "bundle" / "config.json").read_text())
    assert config["model_config"]["encoder"] == name
    assert config["model_config"]["preprocess"] == json.loads(json.dumps(
        {k: v for k, v in vars(ckpt.model_config.preprocess).items()}))
    printed = [run("caption", image, "-m", model, "--json", "--no-pictures", "--precision", "fp32").stdout
               for model in (out / f"BEST_A2C_{NAME}.pth.tar", out / "bundle")]
    assert "caption" in json.loads(printed[0])[0] and printed[0] == printed[1]  # random weights: maybe empty
