"""A run written before the package redesign (tests/fixtures/before_redesign, made by capcli at
3a39fa4) still lists, reads, captions and resumes."""

import json
import os
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from capcli.cli.commands import cli
from capcli.store.files import read_checkpoint
from capcli.store.sidecar import read_meta

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "before_redesign"
RUN = "shapes_5_1"


@pytest.fixture
def old_run(tmp_path, monkeypatch):
    """A copy of the fixture (its paths are relative: data/ and out/), as the working folder."""
    shutil.copytree(FIXTURE, tmp_path / "run")
    out = tmp_path / "run" / "out"
    # a clone's files all carry its checkout time; the run wrote each sidecar after its checkpoint
    checkpoint = out / f"checkpoint_{RUN}.pth.tar"
    written = checkpoint.stat().st_mtime
    os.utime(out / f"checkpoint_{RUN}.meta.json", (written + 1, written + 1))
    monkeypatch.chdir(tmp_path / "run")
    return tmp_path / "run"


def _capcli(*args) -> str:
    done = CliRunner().invoke(cli, [str(a) for a in args])
    assert done.exit_code == 0, done.output
    return done.output


def test_the_old_checkpoint_and_sidecar_read_with_their_epoch(old_run):
    ckpt = read_checkpoint(f"out/checkpoint_{RUN}.pth.tar")
    meta = read_meta(f"out/checkpoint_{RUN}.pth.tar")
    assert ckpt.stage == "train"
    assert ckpt.state.epoch == 1 and ckpt.state.best_epoch == 1
    assert meta is not None and meta["epoch"] == 1 and meta["best_epoch"] == 1 and meta["run"] == RUN
    assert ckpt.model_config.encoder == "resnet-small" and ckpt.model_config.vocab_size == len(ckpt.word_map)


def test_the_old_run_lists_and_captions(old_run):
    listed = _capcli("runs", "--output-folder", "out")
    row = next(line for line in listed.splitlines() if line.startswith(RUN))
    assert "1/1" in row and "finished" in row
    out = _capcli("caption", "data/shapes/images/shapes_000000.jpg", "-m", f"out/checkpoint_{RUN}.pth.tar",
                  "--output-folder", "captions", "--beam", 2)
    caption = out.splitlines()[-2]
    assert caption.split() and set(caption.split()) <= set(read_checkpoint(f"out/checkpoint_{RUN}.pth.tar").word_map)
    assert (old_run / "captions" / "caption_result.png").stat().st_size > 0


def test_the_old_run_resumes_for_a_second_epoch(old_run):
    before = [json.loads(line) for line in (old_run / "out" / f"metrics_{RUN}.jsonl").read_text().splitlines()]
    _capcli("train", "--data-folder", "data", "--output-folder", "out", "--resume", "--epochs", 2)
    ckpt = read_checkpoint(f"out/checkpoint_{RUN}.pth.tar")
    assert ckpt.state.epoch == 2 and ckpt.state.step > 11
    after = [json.loads(line) for line in (old_run / "out" / f"metrics_{RUN}.jsonl").read_text().splitlines()]
    assert after[:len(before)] == before  # the old feed is kept, the new epoch appended
    assert [line["epoch"] for line in after if line["event"] == "epoch" and line["split"] == "val"] == [1, 2]
    assert read_meta(f"out/checkpoint_{RUN}.pth.tar")["epoch"] == 2


def test_the_old_runs_feature_cache_keeps_its_key():
    """A ResNet's feature-cache key is what the old code named its cache files (encoders with an
    input preparation of their own, issue 29, add it to theirs): a resumed old run reuses its cache."""
    from capcli.store.files import model_from_checkpoint
    from capcli.training.features import cache_key, encoder_fingerprint

    ckpt = read_checkpoint(str(FIXTURE / "out" / "checkpoint_shapes_5_1.pth.tar"))
    encoder, _ = model_from_checkpoint(ckpt)
    key = cache_key(encoder_fingerprint(encoder), ckpt.image_size)
    assert {p.name for p in (FIXTURE / "data").glob("FEATURES_*")} == \
        {f"FEATURES_{split}_shapes_5_1_{key}.hdf5" for split in ("TRAIN", "VAL")}
