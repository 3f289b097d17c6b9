"""`capcli prep` on the built-in shapes dataset: the seed's file set and the generator's truth."""

from __future__ import annotations

import json
import os

import h5py
import numpy as np
import pytest

from capcli.config import SHAPES_IMAGE_SIZE, SHAPES_IMAGES
from capcli.data import shapes
from capcli.data.vocab import decode

SPLITS = ("TRAIN", "VAL", "TEST")


NUM_IMAGES = 200  # not the default SHAPES_IMAGES (10,000): a quick prep with every other option at its default


@pytest.fixture(scope="module")
def default_prep(tmp_path_factory):
    """`capcli prep` with no option but a small --num-images, run in an empty working directory."""
    from click.testing import CliRunner

    from capcli.cli.commands import cli

    cwd = tmp_path_factory.mktemp("default")
    old = os.getcwd()
    os.chdir(cwd)
    try:
        result = CliRunner().invoke(cli, ["prep", "--num-images", str(NUM_IMAGES)])
    finally:
        os.chdir(old)
    assert result.exit_code == 0, result.output
    return cwd / "data_output", result


def _load(folder, kind, split=None, name="shapes_5_5"):
    prefix = f"{split}_{kind}" if split else kind
    with open(folder / f"{prefix}_{name}.json") as f:
        return json.load(f)


def test_default_prep_writes_the_seed_file_set(default_prep):
    out, result = default_prep
    assert "Prepared shapes_5_5" in result.output
    word_map = _load(out, "WORDMAP")
    assert word_map["<pad>"] == 0
    n_words = len(word_map) - 4
    assert sorted(v for k, v in word_map.items() if not k.startswith("<")) == list(range(1, n_words + 1))
    assert [word_map["<unk>"], word_map["<start>"], word_map["<end>"]] == [n_words + 1, n_words + 2, n_words + 3]
    manifest = _load(out, "MANIFEST")
    counts = {"TRAIN": round(0.8 * NUM_IMAGES), "VAL": round(0.1 * NUM_IMAGES), "TEST": round(0.1 * NUM_IMAGES)}
    assert manifest["counts"] == counts  # 80 / 10 / 10
    assert manifest["vocab_size"] == len(word_map)
    for split in SPLITS:
        with h5py.File(out / f"{split}_IMAGES_shapes_5_5.hdf5") as h:
            images = h["images"]
            assert images.dtype == np.uint8
            assert images.shape == (counts[split], 3, SHAPES_IMAGE_SIZE, SHAPES_IMAGE_SIZE)  # the shapes default size
            assert h.attrs["captions_per_image"] == 5
            assert images[0].std() > 5  # a real picture, not a blank
        rows, lens = _load(out, "CAPTIONS", split), _load(out, "CAPLENS", split)
        assert len(rows) == len(lens) == 5 * manifest["counts"][split]
        for row, length in zip(rows, lens):
            assert len(row) == 52
            assert row[0] == word_map["<start>"]
            assert row[length - 1] == word_map["<end>"]
            assert all(t == 0 for t in row[length:])
            assert all(0 < t < word_map["<end>"] for t in row[1:length - 1])
    assert len(manifest["images"]["TRAIN"]) == counts["TRAIN"]
    assert manifest["skipped"] == []


def test_prep_makes_shapes_images_by_default():
    from capcli.cli.commands import cli

    [option] = [p for p in cli.commands["prep"].params if p.name == "num_images"]
    assert option.default == SHAPES_IMAGES


def test_vocabulary_counts_training_captions_only(tmp_path, run):
    result = run("prep", "--num-images", 20, "--output-folder", tmp_path, "--min-word-freq", 1)
    assert result.exit_code == 0, result.output
    source = json.load(open(tmp_path / "shapes" / "dataset_shapes.json"))
    train_words = {w for e in source["images"] if e["split"] == "train" for s in e["sentences"] for w in s["tokens"]}
    word_map = _load(tmp_path, "WORDMAP", name="shapes_5_1")
    assert set(word_map) - {"<pad>", "<unk>", "<start>", "<end>"} == train_words


def test_captions_are_truthful_and_varied(tmp_path):
    for index in range(60):
        entry = shapes.generate_one((7, index, str(tmp_path)))
        objects = [shapes.Shape(**o) for o in entry["objects"]]
        sentences = [" ".join(s["tokens"]) for s in entry["sentences"]]
        assert len(set(sentences)) == 5
        colours, kinds = {o.colour for o in objects}, {o.shape for o in objects}
        for sentence in sentences:
            words = sentence.split()
            assert {w for w in words if w in shapes.COLOURS} <= colours
            assert {w for w in words if w in shapes.SHAPES} <= kinds
            # a count word, when present, is the true count
            for word, count in {"single": 1, "one": 1, "two": 2, "three": 3}.items():
                if word in words:
                    assert len(objects) == count, (sentence, objects)
            for size in ("small", "large", "big"):
                if size in words:
                    wanted = "small" if size == "small" else "large"
                    assert wanted in {o.size for o in objects}, (sentence, objects)
        # every object is mentioned with its colour in at least one caption
        text = " ".join(sentences)
        assert all(f"{o.colour} {o.shape}" in text for o in objects)
        # the drawn pixel at each centre has the object's colour
        from PIL import Image

        pixels = np.asarray(Image.open(tmp_path / entry["filename"]), dtype=int)
        for o in objects:
            if o.shape in ("circle", "square"):
                centre = pixels[int(o.y), int(o.x)]
                assert np.abs(centre - np.array(shapes.COLOURS[o.colour])).max() < 45, (o, centre)


def test_relations_in_captions_match_positions():
    import random

    a = shapes.Shape("red", "circle", "small", 40, 128, 18)
    b = shapes.Shape("blue", "square", "large", 200, 120, 40)
    c = shapes.Shape("green", "star", "small", 120, 220, 18)
    assert shapes.relation(a, b) == "left" and shapes.relation(b, a) == "right"
    assert shapes.relation(c, b) == "below" and shapes.relation(b, c) == "above"
    texts = shapes._two(a, b, random.Random(0))
    # texts[0] is "<a> <relation of a to b> <b>", texts[1] the same from b's side
    assert texts[0].startswith("a ") and " red circle " in texts[0] and texts[0].endswith(" blue square")
    assert any(f" {w} " in texts[0] for w in shapes._RELATION_WORDS["left"])
    assert any(f" {w} " in texts[1] for w in shapes._RELATION_WORDS["right"])
    assert "left" not in texts[1] and "right" not in texts[0]


def test_generation_is_deterministic_and_independent_of_workers(tmp_path, run):
    for workers in (1, 2):
        result = run("prep", "--num-images", 30, "--workers", workers, "--output-folder", tmp_path / str(workers))
        assert result.exit_code == 0, result.output
    sources = [json.load(open(tmp_path / w / "shapes" / "dataset_shapes.json")) for w in ("1", "2")]
    assert sources[0] == sources[1]
    for split in SPLITS:
        arrays = []
        for w in ("1", "2"):
            with h5py.File(tmp_path / w / f"{split}_IMAGES_shapes_5_5.hdf5") as h:
                arrays.append(h["images"][:])
        np.testing.assert_array_equal(arrays[0], arrays[1])
    other = run("prep", "--num-images", 30, "--seed", 3, "--output-folder", tmp_path / "seed3")
    assert other.exit_code == 0
    assert json.load(open(tmp_path / "seed3" / "shapes" / "dataset_shapes.json")) != sources[0]


def test_stored_rows_decode_to_source_captions(tmp_path, run):
    result = run("prep", "--num-images", 20, "--output-folder", tmp_path, "--min-word-freq", 1)
    assert result.exit_code == 0
    source = {e["filename"]: [s["tokens"] for s in e["sentences"]]
              for e in json.load(open(tmp_path / "shapes" / "dataset_shapes.json"))["images"]}
    manifest = _load(tmp_path, "MANIFEST", name="shapes_5_1")
    word_map = _load(tmp_path, "WORDMAP", name="shapes_5_1")
    for split in SPLITS:
        rows = _load(tmp_path, "CAPTIONS", split, name="shapes_5_1")
        for k, entry in enumerate(manifest["images"][split]):
            # words outside the training vocabulary are stored as <unk>
            expected = [[w if w in word_map else "<unk>" for w in c] for c in source[entry["source"]]]
            for row in rows[5 * k:5 * k + 5]:
                assert decode(row, word_map) in expected
