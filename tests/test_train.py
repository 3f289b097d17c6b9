"""`capcli train` end to end on a tiny shapes set: output files, the metrics feed, resume,
checkpoint safety, pretrained weights, the feature cache, signals and NaN handling."""

from __future__ import annotations

import json
import os
import pickle
import signal
import time

import pytest
import torch

from capcli.runs.feed import FIELDS, read_feed
from capcli.store.checkpoint import load_checkpoint
from tests.conftest import run_subprocess

TINY = ("--encoder", "resnet18", "--embed-dim", 16, "--attention-dim", 16, "--decoder-dim", 32,
        "--batch-size", 16, "--precision", "fp32", "--seed", 3, "--frozen-encoder")


def train_args(data, out, *extra):
    return ("train", "--data-folder", data, "--output-folder", out, *TINY, *extra)


def test_two_epochs_write_every_file_and_feed_line(data, tmp_path, run):
    out = tmp_path / "out"
    result = run(*train_args(data, out, "--epochs", 2))
    assert result.exit_code == 0, result.output
    name = "shapes_5_1"
    for file in (f"checkpoint_{name}.pth.tar", f"BEST_{name}.pth.tar", f"metrics_{name}.jsonl",
                 f"bleu_scores_{name}.json", f"training_metrics_{name}.json"):
        assert (out / file).exists(), file
    lines = [json.loads(raw) for raw in open(out / f"metrics_{name}.jsonl")]
    assert all(set(FIELDS) <= set(line) for line in lines)
    assert _val_epochs(lines) == [1, 2]
    val = [line for line in lines if line["event"] == "epoch" and line["split"] == "val"]
    assert all(0.0 <= line["bleu4"] <= 1.0 and line["loss"] > 0 for line in val)
    assert lines[-1]["event"] == "end"
    assert len(json.load(open(out / f"bleu_scores_{name}.json"))) == 2
    metrics = json.load(open(out / f"training_metrics_{name}.json"))
    assert set(metrics) == {"train_loss", "train_top5", "val_loss", "val_top5", "val_cider_d"}
    assert all(len(v) == 2 for v in metrics.values())
    ckpt = load_checkpoint(str(out / f"checkpoint_{name}.pth.tar"))
    assert ckpt["epoch"] == 2 and ckpt["model_config"]["encoder"] == "resnet18"
    assert ckpt["word_map"]["<pad>"] == 0


def _weights(path):
    ckpt = load_checkpoint(str(path))
    return {**{f"e.{k}": v for k, v in ckpt["encoder"].items()}, **{f"d.{k}": v for k, v in ckpt["decoder"].items()}}


def test_resume_equals_straight_run(data, tmp_path, run):
    straight, resumed = tmp_path / "a", tmp_path / "b"
    assert run(*train_args(data, straight, "--epochs", 2)).exit_code == 0
    assert run(*train_args(data, resumed, "--epochs", 1)).exit_code == 0
    result = run(*train_args(data, resumed, "--epochs", 2, "--resume"))
    assert result.exit_code == 0, result.output
    a, b = _weights(straight / "checkpoint_shapes_5_1.pth.tar"), _weights(resumed / "checkpoint_shapes_5_1.pth.tar")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key].float(), b[key].float(), atol=1e-5, rtol=0, msg=key)


def _val_epochs(lines):
    return [line["epoch"] for line in lines if line["event"] == "epoch" and line["split"] == "val"]


def test_sigkill_then_resume_has_each_epoch_once(data, tmp_path, run):
    out = tmp_path / "out"
    small_batches = ("--batch-size", 5)  # one image (its 5 captions) a step: 32 steps an epoch
    assert run(*train_args(data, out, "--epochs", 1, *small_batches)).exit_code == 0
    feed = str(out / "metrics_shapes_5_1.jsonl")
    proc = run_subprocess(*train_args(data, out, "--epochs", 3, "--resume", *small_batches))
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # wait for epoch 2's first steps
        if any(line["event"] == "step" and line["epoch"] == 2 for line in read_feed(feed)):
            break
        time.sleep(0.01)
    proc.kill()
    proc.wait()
    assert _val_epochs(read_feed(feed)) == [1]  # killed inside epoch 2
    result = run(*train_args(data, out, "--epochs", 3, "--resume", *small_batches))
    assert result.exit_code == 0, result.output
    lines = read_feed(feed)
    assert _val_epochs(lines) == [1, 2, 3]
    steps = [line["step"] for line in lines if line["event"] == "step"]
    assert steps == list(range(1, 97))  # every step of 3 × 32 logged (32 // 20 = 1), none twice
    best = load_checkpoint(str(out / "BEST_shapes_5_1.pth.tar"))
    ckpt = load_checkpoint(str(out / "checkpoint_shapes_5_1.pth.tar"))
    assert [e["epoch"] for e in ckpt["epochs"]] == [1, 2, 3] and ckpt["epoch"] == 3
    assert best["best_bleu4"] == max(e["val_bleu4"] for e in ckpt["epochs"])


def test_a_new_run_never_overwrites_an_existing_one(data, tmp_path, run):
    out = tmp_path / "out"
    assert run(*train_args(data, out, "--epochs", 1)).exit_code == 0
    before = open(out / "checkpoint_shapes_5_1.pth.tar", "rb").read()
    result = run(*train_args(data, out, "--epochs", 1))
    assert result.exit_code == 1 and "--resume" in result.output and "--overwrite" in result.output
    assert open(out / "checkpoint_shapes_5_1.pth.tar", "rb").read() == before
    assert run(*train_args(data, out, "--epochs", 1, "--overwrite")).exit_code == 0
    assert _val_epochs(read_feed(str(out / "metrics_shapes_5_1.jsonl"))) == [1]


def test_conflicting_architecture_flag_on_resume(data, tmp_path, run):
    out = tmp_path / "out"
    assert run(*train_args(data, out, "--epochs", 1)).exit_code == 0
    result = run(*train_args(data, out, "--epochs", 2, "--resume", "--decoder", "plain"))
    assert result.exit_code == 1
    assert "--decoder plain conflicts" in result.output


class _Marker:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_malicious_checkpoint_is_refused(data, tmp_path, run):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pth.tar"
    with open(evil, "wb") as f:
        pickle.dump({"format": "capcli-checkpoint", "payload": _Marker(str(marker))}, f)
    result = run(*train_args(data, tmp_path / "out", "--checkpoint", evil))
    assert result.exit_code == 1
    assert "refused to load" in result.output and len(result.output.strip().splitlines()) == 1
    assert not marker.exists()


def test_pretrained_from_torch_home(tmp_path, monkeypatch):
    from capcli.errors import CapcliError
    from capcli.model.encoder import Encoder
    from capcli.model.pretrained import hub_weights_path, load_pretrained
    from capcli.runtime.torch_compat import import_torchvision

    torchvision = import_torchvision()

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    monkeypatch.setattr("capcli.model.pretrained.imagenet_url",  # offline: nothing answers there
                        lambda name: "http://127.0.0.1:9/models/resnet34-b627a593.pth")
    expected = hub_weights_path("resnet34")
    assert expected == str(tmp_path / "th" / "hub" / "checkpoints" / "resnet34-b627a593.pth")
    encoder = Encoder("resnet34")
    with pytest.raises(CapcliError, match="resnet34-b627a593.pth"):
        load_pretrained(encoder)
    reference = torchvision.models.resnet34(weights=None)
    os.makedirs(os.path.dirname(expected), exist_ok=True)
    torch.save(reference.state_dict(), expected)
    assert load_pretrained(encoder) == expected
    for key, value in encoder.resnet.state_dict().items():
        index, rest = key.split(".", 1)
        name = ["conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"][int(index)]
        torch.testing.assert_close(value, reference.state_dict()[f"{name}.{rest}"])


def test_pretrained_missing_is_one_line_error(data, tmp_path, run, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))
    monkeypatch.setattr("capcli.model.pretrained.imagenet_url",
                        lambda name: "http://127.0.0.1:9/models/resnet18-f37072fd.pth")
    result = run(*train_args(data, tmp_path / "out", "--epochs", 1, "--pretrained"))
    assert result.exit_code == 1
    assert str(tmp_path / "empty" / "hub" / "checkpoints" / "resnet18-f37072fd.pth") in result.output


def test_feature_cache_runs_the_encoder_once(data, tmp_path, run, monkeypatch):
    from capcli.model.encoder import Encoder

    calls = []
    original = Encoder.infer  # how every frozen-encoder batch is encoded
    monkeypatch.setattr(Encoder, "infer", lambda self, x: calls.append(len(x)) or original(self, x))
    for folder in os.listdir(data):
        if folder.startswith("FEATURES_"):
            os.remove(data / folder)
    assert run(*train_args(data, tmp_path / "a", "--epochs", 2)).exit_code == 0
    assert sum(calls) == 32 + 4  # every TRAIN and VAL image once, in the first epoch only
    calls.clear()
    assert run(*train_args(data, tmp_path / "b", "--epochs", 1)).exit_code == 0
    assert calls == []  # a second run reuses the cache
    assert run(*train_args(data, tmp_path / "c", "--epochs", 1, "--seed", 4)).exit_code == 0
    assert sum(calls) == 36  # other encoder weights: a new cache
    assert len([f for f in os.listdir(data) if f.startswith("FEATURES_TRAIN")]) == 2


def test_sigterm_saves_and_names_resume(data, tmp_path):
    out = tmp_path / "out"
    proc = run_subprocess(*train_args(data, out, "--epochs", 50))
    feed = out / "metrics_shapes_5_1.jsonl"
    deadline = time.monotonic() + 120
    while not (feed.exists() and os.path.getsize(feed) > 0) and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode != 0
    assert "--resume" in err and "Traceback" not in err
    ckpt = load_checkpoint(str(out / "checkpoint_shapes_5_1.pth.tar"))
    assert ckpt["step"] >= 1


def test_nan_loss_stops_and_keeps_checkpoint(data, tmp_path, run, monkeypatch):
    out = tmp_path / "out"
    assert run(*train_args(data, out, "--epochs", 1)).exit_code == 0
    before = open(out / "checkpoint_shapes_5_1.pth.tar", "rb").read()
    import capcli.training.train

    real = capcli.training.train.caption_loss
    monkeypatch.setattr(capcli.training.train, "caption_loss",
                        lambda *a, **k: (real(*a, **k)[0] * float("nan"), real(*a, **k)[1]))
    result = run(*train_args(data, out, "--epochs", 2, "--resume"))
    assert result.exit_code == 1
    assert "became nan" in result.output and len(result.output.strip().splitlines()) == 1
    assert open(out / "checkpoint_shapes_5_1.pth.tar", "rb").read() == before


def test_workers_teacher_forcing_plain_one_hot_and_save_every(data, tmp_path, run):
    out = tmp_path / "out"
    result = run(*train_args(data, out, "--epochs", 1, "--workers", 2, "--teacher-forcing", 0.5,
                             "--decoder", "plain", "--one-hot", "--save-every", 0.0001, "--no-feature-cache"))
    assert result.exit_code == 0, result.output
    ckpt = load_checkpoint(str(out / "checkpoint_shapes_5_1.pth.tar"))
    assert ckpt["model_config"]["decoder"] == "plain" and ckpt["model_config"]["one_hot"]
    assert ckpt["epoch"] == 1 and ckpt["step"] == 11  # 32 images, 3 a step (16 captions // 5 per image)
    assert not [f for f in os.listdir(data) if f.startswith("FEATURES_") and "partial" in f]


def test_shapes_defaults_apply_unless_given(data, tmp_path, run):
    from capcli.config import SHAPES_TRAIN_DEFAULTS

    out = tmp_path / "out"
    assert run("train", "--data-folder", data, "--output-folder", out, "--epochs", 1,
               "--precision", "fp32").exit_code == 0
    ckpt = load_checkpoint(str(out / "checkpoint_shapes_5_1.pth.tar"))
    for key in ("encoder", "embed_dim", "attention_dim", "decoder_dim"):
        assert ckpt["model_config"][key] == SHAPES_TRAIN_DEFAULTS[key]
    for key in ("fine_tune_encoder", "encoder_lr", "decoder_lr", "batch_size"):
        assert ckpt["train_config"][key] == SHAPES_TRAIN_DEFAULTS[key]
    assert ckpt["encoder_optimizer"] is not None  # the encoder is trained
    out2 = tmp_path / "out2"
    assert run("train", "--data-folder", data, "--output-folder", out2, "--epochs", 1, "--precision", "fp32",
               "--encoder", "resnet34", "--frozen-encoder", "--decoder-lr", 2e-4).exit_code == 0
    ckpt = load_checkpoint(str(out2 / "checkpoint_shapes_5_1.pth.tar"))
    assert ckpt["model_config"]["encoder"] == "resnet34" and ckpt["model_config"]["decoder_dim"] == 256
    assert not ckpt["train_config"]["fine_tune_encoder"] and ckpt["train_config"]["decoder_lr"] == 2e-4


def test_compile_trains(data, tmp_path, run):
    out = tmp_path / "out"
    result = run(*train_args(data, out, "--epochs", 1, "--compile"))
    assert result.exit_code == 0, result.output
    ckpt = load_checkpoint(str(out / "checkpoint_shapes_5_1.pth.tar"))
    assert ckpt["epoch"] == 1 and ckpt["train_config"]["compile"]
    assert not any(key.startswith("_orig") for key in ckpt["decoder"])  # plain weights, loadable anywhere
