"""Bad images are skipped with their captions and a reason; odd-but-valid images become RGB;
malformed caption files stop prep with a one-line error and write nothing."""

from __future__ import annotations

import json
import os

import h5py
import numpy as np
from PIL import Image

from tests.conftest import karpathy_entry, write_image, write_karpathy

NAME = "flickr8k_5_1"


def _make_images(folder):
    """Every awkward case; returns {filename: expected RGB at (top, bottom)} for good ones."""
    os.makedirs(folder)
    good = {}
    write_image(folder / "good.jpg", (200, 40, 40))
    good["good.jpg"] = ((200, 40, 40), (200, 40, 40))
    data = open(write_image(folder / "full.jpg", (10, 200, 10), size=(64, 64)), "rb").read()
    (folder / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (folder / "zero.jpg").write_bytes(b"")
    (folder / "text.jpg").write_text("this is not a picture\n")
    Image.new("L", (20, 20), 100).save(folder / "gray.png")
    good["gray.png"] = ((100, 100, 100), (100, 100, 100))
    Image.new("RGBA", (20, 20), (0, 0, 255, 255)).save(folder / "rgba.png")
    good["rgba.png"] = ((0, 0, 255), (0, 0, 255))
    palette = Image.new("P", (20, 20), 1)
    palette.putpalette([0, 0, 0, 0, 180, 0] + [0] * 762)
    palette.save(folder / "palette.gif")
    good["palette.gif"] = ((0, 180, 0), (0, 180, 0))
    Image.new("CMYK", (20, 20), (0, 255, 255, 0)).save(folder / "cmyk.jpg")
    good["cmyk.jpg"] = ((255, 0, 0), (255, 0, 0))
    Image.fromarray(np.full((20, 20), 40000, dtype=np.uint16)).save(folder / "sixteen.png")
    good["sixteen.png"] = ((156, 156, 156), (156, 156, 156))
    # stored landscape, left red / right blue, with EXIF "rotate 90° clockwise to display":
    # shown upright, red is on top and blue at the bottom
    pixels = np.zeros((40, 80, 3), dtype=np.uint8)
    pixels[:, :40] = (220, 0, 0)
    pixels[:, 40:] = (0, 0, 220)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(pixels).save(folder / "exif.jpg", exif=exif.tobytes(), quality=95)
    good["exif.jpg"] = ((220, 0, 0), (0, 0, 220))
    # above Pillow's decompression-bomb limit (about 89.5 M pixels), cheap as a 1-bit PNG
    Image.new("1", (9500, 9500), 0).save(folder / "bomb.png")
    return good


def test_bad_images_are_skipped_and_odd_ones_converted(tmp_path, run):
    folder = tmp_path / "images"
    good = _make_images(folder)
    bad = {"truncated.jpg": "unreadable", "zero.jpg": "not an image", "text.jpg": "not an image",
           "missing.jpg": "missing", "bomb.png": "too many pixels"}
    names = list(good) + list(bad)
    entries = [karpathy_entry(n, "train", [["a", "picture", n.split(".")[0]]]) for n in names]
    write_image(folder / "v.jpg", (9, 9, 9))
    write_image(folder / "t.jpg", (9, 9, 9))
    entries += [karpathy_entry("v.jpg", "val", [["a", "val"]]), karpathy_entry("t.jpg", "test", [["a", "test"]])]
    entries.append(karpathy_entry("v.jpg", "val", [["long"] * 60]))  # no caption short enough
    path = write_karpathy(tmp_path / "dataset_flickr8k.json", "flickr8k", entries)
    out = tmp_path / "out"
    result = run("prep", "--captions", path, "--image-folder", folder, "--output-folder", out,
                 "--min-word-freq", 1, "--image-size", 32, "--workers", 2)
    assert result.exit_code == 0, result.output
    assert "6 image(s) skipped" in result.output
    manifest = json.load(open(out / f"MANIFEST_{NAME}.json"))
    assert [s["split"] for s in manifest["skipped"]] == ["TRAIN"] * 5 + ["VAL"]  # split by split
    assert "no caption of 1..50 words" in manifest["skipped"][-1]["reason"]
    reasons = {s["source"]: s["reason"] for s in manifest["skipped"][:5]}
    assert set(reasons) == set(bad)
    for name, fragment in bad.items():
        assert fragment in reasons[name], (name, reasons[name])
    kept = [e["source"] for e in manifest["images"]["TRAIN"]]
    assert kept == list(good)
    captions = json.load(open(out / f"TRAIN_CAPTIONS_{NAME}.json"))
    word_map = json.load(open(out / f"WORDMAP_{NAME}.json"))
    assert "truncated" not in word_map and "bomb" not in word_map  # skipped with their captions
    with h5py.File(out / f"TRAIN_IMAGES_{NAME}.hdf5") as h:
        images = h["images"][:]
    assert images.shape == (len(good), 3, 32, 32)
    for k, name in enumerate(kept):
        top, bottom = good[name]
        np.testing.assert_allclose(images[k][:, 4, 16], top, atol=12, err_msg=name)
        np.testing.assert_allclose(images[k][:, 27, 16], bottom, atol=12, err_msg=name)
        assert captions[5 * k][3] == word_map[name.split(".")[0]]


def _prep_fails_cleanly(run, tmp_path, flag, path, *fragments):
    """prep with a bad caption file: exit 1, one line naming the place, no output file."""
    out = tmp_path / "out"
    result = run("prep", flag, path, "--image-folder", tmp_path / "images", "--output-folder", out)
    assert result.exit_code == 1
    assert len(result.output.strip().splitlines()) == 1 and "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in result.output
    assert not os.path.isdir(out) or [p for p in os.listdir(out) if not p.startswith(".")] == []


def test_malformed_json_is_one_line_error_and_writes_nothing(tmp_path, run):
    write_image(tmp_path / "images" / "a.jpg")
    path = tmp_path / "dataset_flickr8k.json"
    path.write_text('{"images": [\n  {"filename": "a.jpg", "split": "train",\n   "sentences": [}\n]}\n')
    _prep_fails_cleanly(run, tmp_path, "--captions", path, str(path), "line 3")


def test_structurally_wrong_json_names_the_entry(tmp_path, run):
    write_image(tmp_path / "images" / "a.jpg")
    path = write_karpathy(tmp_path / "dataset_flickr8k.json", "flickr8k",
                          [karpathy_entry("a.jpg", "train", [["x"]]), {"filename": "b.jpg", "split": "banana"}])
    _prep_fails_cleanly(run, tmp_path, "--captions", path, "images[1]", "banana")


def test_a_malformed_csv_row_is_skipped_and_named(tmp_path, run):
    rows = ["image_name| comment_number| comment"]
    for i in range(6):
        write_image(tmp_path / "images" / f"{i}.jpg")
        rows += [f"{i}.jpg| 0| a dog", f"{i}.jpg| 1| a cat"]
    rows.insert(3, "1.jpg")  # line 4: no comment
    path = tmp_path / "results.csv"
    path.write_text("\n".join(rows) + "\n")
    out = tmp_path / "out"
    result = run("prep", "--captions", path, "--image-folder", tmp_path / "images", "--output-folder", out,
                 "--val-fraction", 0.2, "--test-fraction", 0.2, "--image-size", 16, "--min-word-freq", 1)
    assert result.exit_code == 0, result.output
    assert f"skipped {path}: line 4: expected 'image_name| comment_number| comment'" in result.output
    assert "1 bad caption row(s)" in result.output
    manifest = json.load(open(out / "MANIFEST_flickr30k_5_1.json"))
    assert manifest["bad_rows"] == [{"file": str(path), "where": "line 4", "reason": manifest["bad_rows"][0]["reason"]}]
    assert sum(manifest["counts"].values()) == 6


def test_a_results_csv_without_its_header_is_one_line_error(tmp_path, run):
    write_image(tmp_path / "images" / "1.jpg")
    path = tmp_path / "results.csv"
    path.write_text("1.jpg| 0| a dog\n1.jpg| 1| a cat\n")
    _prep_fails_cleanly(run, tmp_path, "--captions", path, f"{path}: line 1: no image column")


def test_missing_inputs_are_one_line_errors(tmp_path, run):
    result = run("prep", "--captions", tmp_path / "nope.json", "--image-folder", tmp_path, "--dataset", "coco",
                 "--output-folder", tmp_path / "o")
    assert result.exit_code == 1 and "nope.json: no such file" in result.output
    result = run("prep", "--dataset", "flickr8k", "--output-folder", tmp_path / "o")
    assert result.exit_code == 1 and "needs its caption file: --captions FILE" in result.output
    result = run("prep", "--captions", tmp_path / "r.csv", "--image-folder", tmp_path / "none")
    assert result.exit_code == 1 and "no such image folder" in result.output
