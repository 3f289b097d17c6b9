"""A damaged, foreign, hand-edited or malicious checkpoint gives capcli's own one-line sentence
through ``capcli caption -m`` and ``capcli evaluate -m``: never PyTorch's text, never a
traceback, and "unsafe" only for a file that asks to run code."""

from __future__ import annotations

import io
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch

from capcli.store.checkpoint import load_checkpoint
from tests.conftest import write_image

NAME = "shapes_5_1"


class _Touch:
    """Pickles as a call of ``os.system`` that would create ``path``."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


class _Custom:
    """A class of the test module: importing it to unpickle would run this module's code."""


def _edited(real: dict, change) -> bytes:
    ckpt = {k: (dict(v) if isinstance(v, dict) else v) for k, v in real.items()}
    change(ckpt)
    buffer = io.BytesIO()
    torch.save(ckpt, buffer)
    return buffer.getvalue()


def _saved(obj, **kwargs) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer, **kwargs)
    return buffer.getvalue()


def _bad_files(real_path: str, marker: str) -> dict[str, tuple[bytes, str]]:
    """Case name → (file content, words the error must contain)."""
    raw = open(real_path, "rb").read()
    real = load_checkpoint(real_path)
    random_bytes = np.random.default_rng(0).bytes(4096)
    return {
        "torn": (raw[:len(raw) // 2], "truncated or corrupt"),
        "empty": (b"", "truncated or corrupt"),
        "random": (random_bytes, "truncated or corrupt"),
        "foreign": (_saved({"a": 1}), "not a capcli checkpoint"),
        "state_dict": (_saved(torch.nn.Linear(2, 2).state_dict()), "not a capcli checkpoint"),
        "plain_pickle": (pickle.dumps({"weights": [1, 2]}), "not a capcli checkpoint"),
        "no_model_config": (_edited(real, lambda c: c.pop("model_config")), "missing model_config"),
        "no_start": (_edited(real, lambda c: c["word_map"].pop("<start>")), "word map has no <start>"),
        "no_end": (_edited(real, lambda c: c["word_map"].pop("<end>")), "word map has no <end>"),
        "no_pad": (_edited(real, lambda c: c["word_map"].pop("<pad>")), "word map has no <pad>"),
        "wrong_type": (_edited(real, lambda c: c["model_config"].update(embed_dim="16")),
                       "model_config field embed_dim is str"),
        "unknown_encoder": (_edited(real, lambda c: c["model_config"].update(encoder="resnet999")),
                            "unknown encoder"),
        "wrong_shape": (_edited(real, lambda c: c["model_config"].update(decoder_dim=48)),
                        "does not fit model_config"),
        "unsafe_class": (_saved(_Custom()), "unsafe"),
        "unsafe_system": (_saved(_Touch(marker)), "unsafe"),
        "unsafe_plain_pickle": (pickle.dumps(_Touch(marker)), "unsafe"),
    }


@pytest.fixture(scope="module")
def bad_checkpoints(trained_run, tmp_path_factory):
    _, out = trained_run
    folder = tmp_path_factory.mktemp("bad_checkpoints")
    marker = str(folder / "code_ran")
    paths = {}
    for case, (content, words) in _bad_files(str(out / f"BEST_{NAME}.pth.tar"), marker).items():
        path = folder / f"{case}.pth.tar"
        path.write_bytes(content)
        paths[case] = (path, words)
    return paths, marker


def _one_error_line(result) -> str:
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output and isinstance(result.exception, SystemExit)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    return lines[0]


CASES = ["torn", "empty", "random", "foreign", "state_dict", "plain_pickle", "no_model_config", "no_start",
         "no_end", "no_pad", "wrong_type", "unknown_encoder", "wrong_shape", "unsafe_class", "unsafe_system",
         "unsafe_plain_pickle"]


@pytest.mark.parametrize("case", CASES)
def test_caption_and_evaluate_give_one_sentence(case, bad_checkpoints, trained_run, run, tmp_path):
    paths, marker = bad_checkpoints
    path, words = paths[case]
    data, _ = trained_run
    image = write_image(tmp_path / "photo.png")
    for args in (("caption", image, "-m", path), ("evaluate", "-m", path, "--data-folder", data, "--beams", "1")):
        line = _one_error_line(run(*args, "--output-folder", tmp_path / "out"))
        assert str(path) in line and words in line, line
        assert ("unsafe" in line) == case.startswith("unsafe"), line
        assert "Weights only" not in line and "PytorchStreamReader" not in line and "\x1b" not in line
    assert not os.path.exists(marker)  # nothing in any file ran
    assert not (tmp_path / "out").exists()


def test_a_refused_pickle_prints_only_the_sentence_on_the_real_stderr(tmp_path):
    """torch warns about the pickle protocol before refusing: the warning must not reach the user."""
    marker = tmp_path / "code_ran"
    evil = tmp_path / "model.pth.tar"
    evil.write_bytes(pickle.dumps(_Touch(str(marker)), protocol=4))
    image = write_image(tmp_path / "photo.png")
    done = subprocess.run([sys.executable, "-m", "capcli.cli", "caption", image, "-m", evil, "--output-folder",
                           tmp_path / "out"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and "unsafe" in lines[0], done.stderr
    assert "posix.system" in lines[0] and not marker.exists()


@pytest.mark.parametrize("case", ["torn", "foreign", "no_model_config", "no_start", "wrong_type", "unsafe_system"])
def test_train_from_a_bad_checkpoint_gives_one_sentence(case, bad_checkpoints, trained_run, run, tmp_path):
    paths, marker = bad_checkpoints
    path, words = paths[case]
    data, _ = trained_run
    line = _one_error_line(run("train", "--data-folder", data, "--output-folder", tmp_path / "out",
                               "--checkpoint", path, "--epochs", 3))
    assert str(path) in line and words in line, line
    assert not os.path.exists(marker) and not (tmp_path / "out" / f"checkpoint_{NAME}.pth.tar").exists()


@pytest.mark.parametrize("edit, words", [
    (lambda c: c.pop("epoch"), "missing epoch"),
    (lambda c: c.pop("decoder_optimizer"), "missing decoder_optimizer"),
    (lambda c: c.update(step="many"), "step is not a count"),
    (lambda c: c.update(stage="a2c"), "a2c checkpoint"),
])
def test_train_resume_from_a_hand_edited_run_state(edit, words, trained_run, run, tmp_path):
    data, out = trained_run
    edited = tmp_path / "edited.pth.tar"
    edited.write_bytes(_edited(load_checkpoint(str(out / f"checkpoint_{NAME}.pth.tar")), edit))
    line = _one_error_line(run("train", "--data-folder", data, "--output-folder", tmp_path / "out",
                               "--checkpoint", edited, "--epochs", 3))
    assert str(edited) in line and words in line, line


def test_a_hand_edited_size_is_refused_before_anything_is_allocated(trained_run, run, tmp_path):
    _, out = trained_run
    real = load_checkpoint(str(out / f"BEST_{NAME}.pth.tar"))
    huge = tmp_path / "huge.pth.tar"
    huge.write_bytes(_edited(real, lambda c: c["model_config"].update(vocab_size=10**13)))
    line = _one_error_line(run("caption", write_image(tmp_path / "photo.png"), "-m", huge,
                               "--output-folder", tmp_path / "out"))
    assert str(huge) in line and "vocab_size" in line and "outside" in line  # capcli.limits, before the weights


def test_a_checkpoint_whose_compressed_pickle_is_damaged_is_corrupt(trained_run, run, tmp_path):
    import zipfile

    bad = tmp_path / "deflated.pth.tar"
    with zipfile.ZipFile(tmp_path / "good.zip", "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("archive/data.pkl", pickle.dumps({"a": 1}) * 50)
    raw = bytearray((tmp_path / "good.zip").read_bytes())
    start = raw.index(b"archive/data.pkl") + len("archive/data.pkl")
    raw[start:start + 8] = b"\xff" * 8  # an invalid deflate block right where the data begins
    bad.write_bytes(bytes(raw))
    line = _one_error_line(run("caption", write_image(tmp_path / "photo.png"), "-m", bad,
                               "--output-folder", tmp_path / "out"))
    assert str(bad) in line and ("truncated or corrupt" in line or "not a capcli checkpoint" in line), line
