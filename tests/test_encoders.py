"""Encoders after ResNet (issue 29): torchvision's ConvNeXt, EfficientNetV2, RegNetY, Swin and ViT and
CLIP's image towers as feature grids, each preparing images as its weights were trained, tuning its
last stages or blocks, and loading weights from a file of the whole model."""

import dataclasses

import pytest
import torch

from capcli.config import ModelConfig, Preprocess, encoder_problem
from capcli.errors import CapcliError, CheckpointError
from capcli.model.backbones import torchvision_model, torchvision_weights
from capcli.model.captioner import build_encoder, build_model, with_preprocess
from capcli.model.pretrained import load_pretrained
from capcli.store.fields import model_config_from
from capcli.training.features import encoder_fingerprint

FAMILIES = ["convnext_tiny", "efficientnet_v2_s", "regnet_y_400mf", "swin_t", "vit_b_32"]
# the part of torchvision's model whose output is the grid
_LAST_PART = {"convnext_tiny": "features", "efficientnet_v2_s": "features", "regnet_y_400mf": "trunk_output",
              "swin_t": "norm", "vit_b_32": "encoder"}


def _encoder(name: str, **config):
    torch.manual_seed(0)
    return build_encoder(with_preprocess(ModelConfig(vocab_size=10, encoder=name, **config))).eval()


@pytest.mark.parametrize("name", FAMILIES)
def test_each_family_gives_torchvisions_own_features_as_a_grid(name):
    encoder = _encoder(name)
    model = torchvision_model(name).eval()
    model.load_state_dict({**model.state_dict(), **{k: v for k, v in encoder.backbone.state_dict().items()}})
    images = torch.rand(2, 3, 64, 64)
    grid = encoder.infer(images)
    side = encoder.preprocess.size // encoder.backbone.stride
    assert grid.shape == (2, side, side, encoder.dim) and encoder.grid == side
    prepared = torchvision_weights(name).transforms()(images)  # the weights' own resize, crop and normalisation
    torch.testing.assert_close(encoder.prepare(images), prepared, atol=1e-5, rtol=1e-5)
    seen = {}
    getattr(model, _LAST_PART[name]).register_forward_hook(lambda _m, _i, out: seen.setdefault("out", out))
    with torch.no_grad():
        model(prepared)
    expected = seen["out"]
    if name.startswith("vit"):  # the class token dropped, the patches back on their grid
        expected = expected[:, 1:].reshape(grid.shape)
    elif not name.startswith("swin"):  # (batch, C, H, W) → (batch, H, W, C)
        expected = expected.permute(0, 2, 3, 1)
    torch.testing.assert_close(grid, expected, atol=1e-4, rtol=1e-4)


def test_a_larger_map_is_pooled_to_the_configured_grid():
    encoder = _encoder("vit_b_32", encoded_size=4)  # 7 × 7 patches
    assert encoder.grid == 4 and encoder.infer(torch.rand(1, 3, 32, 32)).shape == (1, 4, 4, 768)


@pytest.mark.parametrize("name, units, default", [("convnext_tiny", 4, 2), ("vit_b_32", 13, 4), ("swin_t", 4, 2)])
def test_fine_tuning_trains_the_last_stages_or_blocks(name, units, default):
    encoder = _encoder(name)
    parts = encoder.backbone.units()
    assert len(parts) == units and encoder.backbone.default_depth == default

    def trainable(unit):
        return all(p.requires_grad for m in unit for p in m.parameters())

    assert not any(p.requires_grad for p in encoder.parameters())
    encoder.set_fine_tune(True)
    assert [trainable(u) for u in parts] == [False] * (units - default) + [True] * default
    encoder.set_fine_tune(True, 1)
    assert [trainable(u) for u in parts] == [False] * (units - 1) + [True]
    encoder.set_fine_tune(False)
    assert not any(p.requires_grad for p in encoder.parameters())


def test_a_file_of_the_whole_torchvision_model_loads_its_weights(tmp_path):
    torch.manual_seed(1)
    model = torchvision_model("convnext_tiny")
    path = tmp_path / "convnext_tiny.pth"
    torch.save(model.state_dict(), path)  # classifier included, as torchvision ships it
    encoder = _encoder("convnext_tiny")
    assert load_pretrained(encoder, str(path)) == str(path)
    torch.testing.assert_close(encoder.backbone.features[0][0].weight, model.features[0][0].weight)
    torch.save(torchvision_model("regnet_y_400mf").state_dict(), tmp_path / "regnet.pth")
    with pytest.raises(CapcliError, match="holds no convnext_tiny weights"):
        load_pretrained(encoder, str(tmp_path / "regnet.pth"))
    torch.save(torchvision_model("convnext_small").state_dict(), tmp_path / "small.pth")
    with pytest.raises(CapcliError, match="weights do not fit convnext_tiny"):
        load_pretrained(encoder, str(tmp_path / "small.pth"))


def test_the_input_preparation_is_part_of_the_saved_architecture():
    config = with_preprocess(ModelConfig(vocab_size=10, encoder="swin_t"))
    assert config.preprocess == Preprocess(224, 232, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), "bicubic")
    assert with_preprocess(ModelConfig(vocab_size=10)).preprocess is None  # a ResNet takes the prepared images
    saved = dataclasses.asdict(config)
    saved["preprocess"]["mean"] = list(saved["preprocess"]["mean"])  # as the bundle's JSON holds it
    assert model_config_from("m.pth.tar", saved) == config
    with pytest.raises(CheckpointError, match="preprocess is out of range"):
        model_config_from("m.pth.tar", {**saved, "preprocess": {**saved["preprocess"], "std": [0, 1, 1]}})
    with pytest.raises(CheckpointError, match="unknown encoder 'resnet9'"):
        model_config_from("m.pth.tar", {**saved, "encoder": "resnet9"})


def test_the_feature_cache_key_changes_with_the_input_preparation():
    config = with_preprocess(ModelConfig(vocab_size=10, encoder="regnet_y_400mf"))
    torch.manual_seed(0)
    first, _ = build_model(config)
    torch.manual_seed(0)
    other, _ = build_model(dataclasses.replace(config, preprocess=dataclasses.replace(config.preprocess, size=192)))
    assert encoder_fingerprint(first) != encoder_fingerprint(other)


def test_encoder_names():
    assert encoder_problem("vit_b_16") is None and encoder_problem("clip:ViT-B-32:openai") is None
    assert "unknown encoder" in encoder_problem("vit_b_99") and "unknown encoder" in encoder_problem("clip:")


# --- CLIP (the clip extra) -----------------------------------------------------------------------


def test_clip_vit_tokens_lie_on_their_grid_with_clips_own_normalisation():
    encoder = _encoder("clip:ViT-B-32")
    assert encoder.preprocess.mean == (0.48145466, 0.4578275, 0.40821073)
    assert encoder.preprocess.interpolation == "bicubic" and encoder.preprocess.size == 224
    grid = encoder.infer(torch.rand(2, 3, 64, 64))
    assert grid.shape == (2, 7, 7, 768)
    _, tokens = encoder.backbone.visual(encoder.prepare(torch.rand(1, 3, 64, 64)))
    assert tokens.shape == (1, 49, 768)


def test_clip_resnet_gives_its_last_stage_before_attention_pooling():
    encoder = _encoder("clip:RN50")
    assert encoder.infer(torch.rand(1, 3, 64, 64)).shape == (1, 7, 7, 2048)


def test_clip_names_and_weights_files(tmp_path):
    from capcli.model.clip import open_clip, parse

    assert parse("clip:ViT-B-32") == ("ViT-B-32", "openai")
    with pytest.raises(CapcliError, match="no weights tagged 'nope'"):
        parse("clip:ViT-B-32:nope")
    with pytest.raises(CapcliError, match="unknown CLIP model 'ViT-Q-1'"):
        parse("clip:ViT-Q-1")
    torch.manual_seed(2)
    model = open_clip().create_model("RN50", pretrained=None)
    path = tmp_path / "rn50.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, path)  # a training checkpoint
    encoder = _encoder("clip:RN50")
    load_pretrained(encoder, str(path))
    torch.testing.assert_close(encoder.backbone.visual.layer4[0].conv1.weight, model.visual.layer4[0].conv1.weight)


def test_arch_shows_a_new_encoders_parts_and_input(run):
    result = run("arch", "--encoder", "convnext_tiny", "--vocab-size", 50, "--fine-tune-encoder")
    assert result.exit_code == 0, result.output
    assert "Encoder input: resized to 236 (bilinear), centre 224×224, mean 0.485, 0.456, 0.406" in result.output
    assert any(line.split()[:2] == ["encoder", "features.7"] and "1×768×7×7" in line
               for line in result.output.splitlines())
    trainable = next(line for line in result.output.splitlines() if line.startswith("encoder ")
                     and line.split()[1].replace(",", "").isdigit())
    total, tuned, _ = (int(x.replace(",", "")) for x in trainable.split()[1:])
    assert 0 < tuned < total  # the last two of its four stages


def test_a_new_familys_weights_come_through_torch_hub_hash_checked(tmp_path, monkeypatch):
    """torchvision's weights API names the file; torch.hub downloads it once (file:// here) and
    checks the SHA-256 prefix in its name."""
    import hashlib

    from capcli.model import pretrained

    assert pretrained.imagenet_url("swin_t") == torchvision_weights("swin_t").url
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    torch.manual_seed(3)
    model = torchvision_model("regnet_y_400mf")
    raw = tmp_path / "raw.pth"
    torch.save(model.state_dict(), raw)
    good = raw.rename(tmp_path / f"regnet_y_400mf-{hashlib.sha256(raw.read_bytes()).hexdigest()[:8]}.pth")
    monkeypatch.setattr(pretrained, "imagenet_url", lambda name: good.as_uri())
    encoder = _encoder("regnet_y_400mf")
    path = load_pretrained(encoder, progress=False)
    assert path == str(tmp_path / "torch_home" / "hub" / "checkpoints" / good.name)
    torch.testing.assert_close(encoder.backbone.stem[0].weight, model.stem[0].weight)
    bad = tmp_path / "served" / "regnet_y_400mf-00000000.pth"
    bad.parent.mkdir()
    bad.write_bytes(good.read_bytes())
    monkeypatch.setattr(pretrained, "imagenet_url", lambda name: bad.as_uri())
    with pytest.raises(CapcliError, match="download rejected"):
        load_pretrained(encoder, progress=False)


def test_clip_without_its_extra_is_one_line_naming_it(monkeypatch, run):
    import sys

    monkeypatch.setitem(sys.modules, "open_clip", None)  # as if not installed: importing it fails
    result = run("arch", "--encoder", "clip:ViT-B-32", "--vocab-size", 20)
    assert result.exit_code == 1
    assert result.output.strip().splitlines()[-1] == \
        "Error: CLIP encoders need open_clip: pip install 'capcli[clip]'"
