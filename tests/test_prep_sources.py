"""`capcli prep` on small inputs in the real formats: Karpathy JSON (flickr8k, flickr30k, coco)
and a Flickr30k Kaggle results.csv. Alignment is proved through the manifest: every stored
image has the colour of its source file and every caption row decodes to one of its captions."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest

from capcli.data.vocab import decode
from tests.conftest import distinct_colour, karpathy_entry, write_image, write_karpathy

SPLITS = ("TRAIN", "VAL", "TEST")


def check_alignment(out, name, captions_by_ref, colour_by_ref, cpi, max_len):
    """Every stored image/caption pair comes from the same source image."""
    manifest = json.load(open(out / f"MANIFEST_{name}.json"))
    word_map = json.load(open(out / f"WORDMAP_{name}.json"))
    for split in SPLITS:
        rows = json.load(open(out / f"{split}_CAPTIONS_{name}.json"))
        lens = json.load(open(out / f"{split}_CAPLENS_{name}.json"))
        with h5py.File(out / f"{split}_IMAGES_{name}.hdf5") as h:
            images = h["images"][:]
            assert h.attrs["captions_per_image"] == cpi
        entries = manifest["images"][split]
        assert len(images) == len(entries) == manifest["counts"][split]
        assert len(rows) == len(lens) == cpi * len(entries)
        for k, entry in enumerate(entries):
            ref = entry["source"]
            mean = images[k].reshape(3, -1).mean(axis=1)
            assert np.abs(mean - np.array(colour_by_ref[ref])).max() < 6, (split, ref)
            # words unseen in training captions are stored as <unk>
            fitting = [[w if w in word_map else "<unk>" for w in c]
                       for c in captions_by_ref[ref] if len(c) <= max_len]
            for j in range(k * cpi, (k + 1) * cpi):
                words = decode(rows[j], word_map)
                assert words in fitting, (split, ref, words)
                assert lens[j] == len(words) + 2
                assert len(rows[j]) == max_len + 2
    return manifest


def _karpathy_dataset(tmp_path, dataset, splits, filepaths=None):
    folder = tmp_path / "images"
    entries, captions, colours = [], {}, {}
    for i, split in enumerate(splits):
        filepath = filepaths[i] if filepaths else None
        filename = f"img{i}.jpg"
        ref = f"{filepath}/{filename}" if filepath else filename
        colour = distinct_colour(i)
        write_image(folder / ref, colour)
        caps = [[f"w{i}", "a", "photo", "number", str(k)] for k in range(5)]
        entries.append(karpathy_entry(filename, split, caps, filepath))
        captions[ref], colours[ref] = caps, colour
    path = write_karpathy(tmp_path / f"dataset_{dataset}.json", dataset, entries)
    return path, folder, captions, colours


@pytest.mark.parametrize("dataset", ["flickr8k", "flickr30k"])
def test_flickr_karpathy_json(tmp_path, run, dataset):
    splits = ["train"] * 5 + ["val", "val", "test"]
    path, folder, captions, colours = _karpathy_dataset(tmp_path, dataset, splits)
    out = tmp_path / "out"
    result = run("prep", "--captions", path, "--image-folder", folder, "--output-folder", out,
                 "--min-word-freq", 1, "--image-size", 32, "--workers", 2)
    assert result.exit_code == 0, result.output
    manifest = check_alignment(out, f"{dataset}_5_1", captions, colours, 5, 50)
    assert manifest["counts"] == {"TRAIN": 5, "VAL": 2, "TEST": 1}


def test_coco_with_filepath_subfolders_and_restval(tmp_path, run):
    splits = ["train", "train", "restval", "restval", "val", "test", "test"]
    filepaths = ["train2014", "train2014", "val2014", "val2014", "val2014", "val2014", "val2014"]
    path, folder, captions, colours = _karpathy_dataset(tmp_path, "coco", splits, filepaths)
    out = tmp_path / "out"
    result = run("prep", "--dataset", "coco", "--captions", path, "--image-folder", folder,
                 "--output-folder", out, "--min-word-freq", 1, "--image-size", 32, "--captions-per-image", 3)
    assert result.exit_code == 0, result.output
    manifest = check_alignment(out, "coco_3_1", captions, colours, 3, 50)
    assert manifest["counts"] == {"TRAIN": 4, "VAL": 1, "TEST": 2}
    assert {e["source"] for e in manifest["images"]["TRAIN"]} == {
        "train2014/img0.jpg", "train2014/img1.jpg", "val2014/img2.jpg", "val2014/img3.jpg"}


def test_dataset_name_comes_from_the_json(tmp_path, run):
    path, folder, _, _ = _karpathy_dataset(tmp_path, "flickr8k", ["train", "val", "test"])
    renamed = tmp_path / "captions.json"
    renamed.write_text(open(path).read())
    result = run("prep", "--captions", renamed, "--image-folder", folder, "--output-folder", tmp_path / "o",
                 "--min-word-freq", 1, "--image-size", 32)
    assert result.exit_code == 0, result.output
    assert (tmp_path / "o" / "WORDMAP_flickr8k_5_1.json").exists()


def _write_results_csv(tmp_path):
    """A results.csv with the awkward cases of the real file."""
    folder = tmp_path / "flickr30k_images"
    rows = ["image_name| comment_number| comment"]
    captions, colours = {}, {}
    for i in range(12):
        name = f"{1000 + i}.jpg"
        colours[name] = distinct_colour(100 + i)
        write_image(folder / name, colours[name])
        n = 4 if i == 0 else 6 if i == 1 else 5
        captions[name] = []
        for k in range(n):
            raw = f"A Dog, number {i}, RUNS fast!" if k == 0 else f"the cat {i} sits ; caption {k} ."
            rows.append(f"{name}| {k}| {raw}")
            captions[name].append(f"a dog number {i} runs fast".split() if k == 0
                                  else f"the cat {i} sits caption {k}".split())
    # one caption longer than max_len (8 words), which must never be stored
    long_caption = "one two three four five six seven eight nine ten"
    rows.append(f"1002.jpg| 5| {long_caption.upper()}")
    captions["1002.jpg"].append(long_caption.split())
    # the published file's row whose number lost its separator
    rows.append("1003.jpg| 5 A Brown Horse .")
    captions["1003.jpg"].append("a brown horse".split())
    path = tmp_path / "results.csv"
    path.write_text("\n".join(rows) + "\n")
    return path, folder, captions, colours


def test_results_csv_split_by_image(tmp_path, run):
    path, folder, captions, colours = _write_results_csv(tmp_path)
    out = tmp_path / "out"
    result = run("prep", "--captions", path, "--image-folder", folder, "--output-folder", out,
                 "--min-word-freq", 1, "--max-len", 8, "--image-size", 32,
                 "--val-fraction", 0.2, "--test-fraction", 0.2)
    assert result.exit_code == 0, result.output
    manifest = check_alignment(out, "flickr30k_5_1", captions, colours, 5, 8)
    by_split = {s: {e["source"] for e in manifest["images"][s]} for s in SPLITS}
    assert sum(len(v) for v in by_split.values()) == 12
    assert not (by_split["TRAIN"] & by_split["VAL"]) and not (by_split["TRAIN"] & by_split["TEST"])
    assert len(by_split["VAL"]) == len(by_split["TEST"]) == 2
    word_map = json.load(open(out / "WORDMAP_flickr30k_5_1.json"))
    assert "ten" not in word_map and "Dog" not in word_map and "," not in word_map
    # the image with 4 captions stores all 4 (one repeated); the one with 6 stores 5 distinct
    rows = json.load(open(out / f"{_split_of(by_split, '1000.jpg')}_CAPTIONS_flickr30k_5_1.json"))
    k = [e["source"] for e in manifest["images"][_split_of(by_split, "1000.jpg")]].index("1000.jpg")
    stored = [tuple(decode(r, word_map)) for r in rows[5 * k:5 * k + 5]]
    assert len(set(stored)) == 4


def _split_of(by_split, name):
    return next(s for s, names in by_split.items() if name in names)


def test_csv_split_is_deterministic_and_row_order_free(tmp_path, run):
    path, folder, _, _ = _write_results_csv(tmp_path)
    lines = path.read_text().splitlines()
    shuffled = tmp_path / "shuffled.csv"
    shuffled.write_text("\n".join([lines[0], *reversed(lines[1:])]) + "\n")
    splits = []
    for i, csv_path in enumerate((path, shuffled)):
        out = tmp_path / f"o{i}"
        assert run("prep", "--captions", csv_path, "--image-folder", folder, "--output-folder", out,
                   "--max-len", 8, "--image-size", 16).exit_code == 0
        manifest = json.load(open(out / "MANIFEST_flickr30k_5_5.json"))
        splits.append({s: sorted(e["source"] for e in manifest["images"][s]) for s in SPLITS})
    assert splits[0] == splits[1]


def test_tutorial_naming_is_found(tmp_path):
    from capcli.data.hdf5 import find_prepared

    (tmp_path / "WORDMAP_coco_5_cap_per_img_5_min_word_freq.json").write_text("{}")
    found = find_prepared(str(tmp_path), "coco_5_5")
    assert found.path("IMAGES", "TRAIN").endswith("TRAIN_IMAGES_coco_5_cap_per_img_5_min_word_freq.hdf5")
    assert find_prepared(str(tmp_path)).name == "coco_5_cap_per_img_5_min_word_freq"
