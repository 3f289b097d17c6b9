"""`capcli prep` on every caption format it reads, each a small file in the real layout: COCO
captions_*.json (two files), Flickr8k.token.txt with its split lists, Kaggle captions.txt, and
generic CSV / TSV / JSONL. Counts, splits, tokenisation, the REFERENCES files, bad rows named by
line, bad files as one-line errors that keep what was prepared, and train + evaluate end to end."""

from __future__ import annotations

import hashlib
import json
import os

import h5py
import pytest

from capcli.data.vocab import coco_tokenize
from tests.conftest import TINY_TRAIN, distinct_colour, write_image

SPLITS = ("TRAIN", "VAL", "TEST")
FAST = ("--image-size", 32, "--min-word-freq", 1, "--workers", 1)


def _prep(run, out, *args):
    result = run("prep", *args, "--output-folder", out, *FAST)
    assert result.exit_code == 0, result.output
    return result


def _manifest(out, name):
    return json.load(open(out / f"MANIFEST_{name}.json"))


def _sources(out, name):
    """Split → the image names kept, in HDF5 order."""
    return {s: [e["source"] for e in _manifest(out, name)["images"][s]] for s in SPLITS}


def _references(out, name):
    """Image name → its REFERENCES entry, checked to follow the HDF5 order and count."""
    refs = {}
    sources = _sources(out, name)
    for split in SPLITS:
        entries = json.load(open(out / f"{split}_REFERENCES_{name}.json"))
        with h5py.File(out / f"{split}_IMAGES_{name}.hdf5") as h:
            assert len(entries) == len(h["images"]) == len(sources[split])
        refs.update(zip(sources[split], entries))
    return refs


# --- tokenisation ------------------------------------------------------------------------------


@pytest.mark.parametrize("raw, tokens", [
    ("A man riding a horse.", "a man riding a horse"),
    ('A dog\'s "red" ball, (3.5 m) -- well-known!', "a dog 's red ball 3.5 m well-known"),
    ("Two kids; one can't swim ... ", "two kids one ca n't swim"),
    ("It\u2019s a T-shirt \u2014 $5 & 20%?", "it 's a t-shirt $ 5 & 20 %"),
    ("  [Three]   {cats} `on` ''a'' mat: ", "three cats on a mat"),
    ("A dog\x1b]0;T\x07 runs\x1b[2J \u202efast", "a dog 0 t runs 2j fast"),  # control characters never words
])
def test_coco_tokenize(raw, tokens):
    assert coco_tokenize(raw) == tokens.split()


# --- COCO captions_*.json ------------------------------------------------------------------------


def _coco_file(path, subset, ids, captions, extra_images=(), extra_annotations=()):
    images = [{"license": 3, "file_name": f"COCO_{subset}_{i:012d}.jpg", "coco_url": "http://x", "height": 16,
               "width": 24, "date_captured": "2013-11-14 16:28:13", "flickr_url": "http://y", "id": i}
              for i in list(ids) + list(extra_images)]
    annotations = [{"image_id": i, "id": 1000 * i + k, "caption": c}
                   for i in ids for k, c in enumerate(captions(i))] + list(extra_annotations)
    data = {"info": {"description": "COCO 2014 Dataset", "year": 2014}, "images": images,
            "licenses": [{"url": "http://z", "id": 3, "name": "Attribution"}], "annotations": annotations}
    path.write_text(json.dumps(data))
    return path


def _coco_captions(i):
    return [f"A picture of thing {i}, seen from the side."] + [f"Another view {k} of thing {i}" for k in range(1, 5)] \
        + (["An extra sixth caption!", "And a seventh one."] if i == 2 else [])


@pytest.fixture
def coco(tmp_path):
    """captions_train2014.json (6 images) + captions_val2014.json (4 images, one without captions,
    one annotation of an unknown image), images under coco/train2014/ and coco/val2014/."""
    ann = tmp_path / "annotations"
    ann.mkdir()
    for subset, ids in (("train2014", range(1, 7)), ("val2014", range(11, 16))):
        for i in ids:
            write_image(tmp_path / "coco" / subset / f"COCO_{subset}_{i:012d}.jpg", distinct_colour(i))
    train = _coco_file(ann / "captions_train2014.json", "train2014", range(1, 7), _coco_captions)
    val = _coco_file(ann / "captions_val2014.json", "val2014", range(11, 15), _coco_captions, extra_images=[15],
                     extra_annotations=[{"image_id": 99, "id": 1, "caption": "nobody"}])
    return train, val, tmp_path / "coco"


def test_coco_two_caption_files(tmp_path, run, coco):
    train, val, folder = coco
    out = tmp_path / "out"
    result = _prep(run, out, "--captions", train, "--captions", val, "--image-folder", folder)
    sources = _sources(out, "coco_5_1")
    assert len(sources["TRAIN"]) == 6 and all(s.startswith("train2014/") for s in sources["TRAIN"])
    assert len(sources["VAL"]) == 2 and len(sources["TEST"]) == 2  # val2014 halved: no test file
    assert all(s.startswith("val2014/") for s in sources["VAL"] + sources["TEST"])
    manifest = _manifest(out, "coco_5_1")
    assert manifest["format"] == "coco"
    assert manifest["bad_rows"] == [{"file": str(val), "where": "annotations[20]",
                                     "reason": "image_id 99 is not in 'images'"}]
    assert [s["source"] for s in manifest["skipped"]] == ["val2014/COCO_val2014_000000000015.jpg"]
    assert f"skipped {val}: annotations[20]" in result.output
    refs = _references(out, "coco_5_1")
    assert refs["train2014/COCO_train2014_000000000001.jpg"][0] == "a picture of thing 1 seen from the side"
    assert len(refs["train2014/COCO_train2014_000000000002.jpg"]) == 7  # all of them, not captions-per-image
    word_map = json.load(open(out / "WORDMAP_coco_5_1.json"))
    assert "side" in word_map and "side." not in word_map and "," not in word_map


# --- Flickr8k.token.txt + split lists -------------------------------------------------------------


@pytest.fixture
def flickr8k(tmp_path):
    """Flickr8k_text/ with the token file (10 listed images, one unlisted, one bad line) and the three
    split lists; images in Flicker8k_Dataset/."""
    text, folder = tmp_path / "Flickr8k_text", tmp_path / "Flicker8k_Dataset"
    text.mkdir()
    names = [f"{1000 + i}_{i:04x}abc.jpg" for i in range(11)]
    lines = []
    for i, name in enumerate(names):
        write_image(folder / name, distinct_colour(40 + i))
        lines += [f"{name}#{k}\tA dog number {i} runs , caption {k} ." for k in range(5)]
    lines.insert(7, "a line without a tab")
    (text / "Flickr8k.token.txt").write_text("\n".join(lines) + "\n")
    for split, chosen in (("train", names[:6]), ("dev", names[6:8]), ("test", names[8:10])):
        (text / f"Flickr_8k.{split}Images.txt").write_text("\n".join(chosen) + "\n")
    return text / "Flickr8k.token.txt", folder, names


def test_flickr8k_token_file_with_its_split_lists(tmp_path, run, flickr8k):
    token, folder, names = flickr8k
    out = tmp_path / "out"
    result = _prep(run, out, "--captions", token, "--image-folder", folder)
    assert _sources(out, "flickr8k_5_1") == {"TRAIN": names[:6], "VAL": names[6:8], "TEST": names[8:10]}
    manifest = _manifest(out, "flickr8k_5_1")
    assert manifest["bad_rows"][0]["where"] == "line 8" and len(manifest["bad_rows"]) == 1
    assert manifest["skipped"] == [{"split": None, "source": names[10], "reason": "in none of the split lists"}]
    assert f"skipped {token}: line 8: expected 'name.jpg#N<TAB>caption'" in result.output
    assert f"skipped {names[10]}: in none of the split lists" in result.output
    refs = _references(out, "flickr8k_5_1")
    assert refs[names[3]] == [f"a dog number 3 runs caption {k}" for k in range(5)]


def test_flickr8k_split_lists_given_as_options(tmp_path, run, flickr8k):
    token, folder, names = flickr8k
    lists = tmp_path / "lists"
    lists.mkdir()
    (lists / "my_train.txt").write_text("\n".join(names[:9]) + "\n")
    (lists / "my_val.txt").write_text("\n".join(names[9:]) + "\n")
    out = tmp_path / "out"
    _prep(run, out, "--captions", token, "--image-folder", folder, "--dataset", "f8k.lists",
          "--split-list", lists / "my_train.txt", "--split-list", lists / "my_val.txt")
    assert _sources(out, "f8k.lists_5_1") == {"TRAIN": names[:9], "VAL": names[9:], "TEST": []}


# --- Kaggle captions.txt ----------------------------------------------------------------------------


def _kaggle(tmp_path):
    folder = tmp_path / "Images"
    rows = ["image,caption"]
    for i in range(10):
        write_image(folder / f"{2000 + i}.jpg", distinct_colour(60 + i))
        rows += [f'{2000 + i}.jpg,"A child, in pink, climbs stairs {i} ."'] + \
                [f"{2000 + i}.jpg,A girl going into building {i} number {k} ." for k in range(1, 5)]
    (tmp_path / "captions.txt").write_text("\n".join(rows) + "\n")
    return tmp_path / "captions.txt", folder


def test_kaggle_captions_txt_with_quoted_commas(tmp_path, run):
    path, folder = _kaggle(tmp_path)
    out = tmp_path / "out"
    _prep(run, out, "--captions", path, "--image-folder", folder, "--val-fraction", 0.2, "--test-fraction", 0.2)
    sources = _sources(out, "flickr8k_5_1")
    assert [len(sources[s]) for s in SPLITS] == [6, 2, 2]
    refs = _references(out, "flickr8k_5_1")
    assert refs["2003.jpg"][0] == "a child in pink climbs stairs 3"
    assert len(refs["2003.jpg"]) == 5 and _manifest(out, "flickr8k_5_1")["bad_rows"] == []


# --- generic CSV / TSV / JSONL ------------------------------------------------------------------------


def _generic(tmp_path, kind):
    """12 images; CSV: one caption per row with a split column; TSV: a JSON list of captions per row,
    no split; JSONL: a list of captions and a split, plus a broken line and an unknown split."""
    folder = tmp_path / "photos"
    names = [f"p{i}.png" for i in range(12)]
    splits = ["train"] * 8 + ["val"] * 2 + ["test"] * 2
    caps = {n: [f"Photo {i}: a bird, sitting.", f"The bird #{i} flies!"] for i, n in enumerate(names)}
    for i, n in enumerate(names):
        write_image(folder / n, distinct_colour(80 + i))
    if kind == "csv":
        lines = ["Split,File Name,Text"] + [f'{s},{n},"{c}"' for n, s in zip(names, splits) for c in caps[n]]
        lines.append("validation,p0.png,")  # line 26: no caption
    elif kind == "tsv":
        lines = ["image\tcaptions\tscore"] + [f"{n}\t{json.dumps(caps[n])}\t0.5" for n in names]
    else:
        lines = [json.dumps({"image": n, "captions": caps[n], "split": s, "license": 1})
                 for n, s in zip(names, splits)]
        lines += ['{"image": "p1.png", "captions": ["broken', json.dumps({"image": "p2.png", "caption": "x",
                                                                         "split": "banana"})]
    path = tmp_path / f"mine.{kind}"
    path.write_text("\n".join(lines) + "\n")
    return path, folder, names, caps


@pytest.mark.parametrize("kind", ["csv", "tsv", "jsonl"])
def test_generic_csv_tsv_jsonl(tmp_path, run, kind):
    path, folder, names, caps = _generic(tmp_path, kind)
    out = tmp_path / "out"
    result = _prep(run, out, "--captions", path, "--image-folder", folder, "--captions-per-image", 2,
                   "--val-fraction", 0.25, "--test-fraction", 0.25)
    assert "Prepared mine_2_1" in result.output  # the dataset is named after the file
    sources = _sources(out, "mine_2_1")
    if kind == "tsv":  # no split: by image, deterministically
        assert [len(sources[s]) for s in SPLITS] == [6, 3, 3]
        assert sorted(sum(sources.values(), [])) == sorted(names)
    else:
        assert sources == {"TRAIN": names[:8], "VAL": names[8:10], "TEST": names[10:]}
    refs = _references(out, "mine_2_1")
    assert refs["p4.png"] == ["photo 4 a bird sitting", "the bird # 4 flies"]
    bad = [(b["where"], b["reason"]) for b in _manifest(out, "mine_2_1")["bad_rows"]]
    expected = {"csv": [("line 26", "no caption")], "tsv": [],
                "jsonl": [("line 13", "malformed JSON at column 34: Unterminated string starting at"),
                          ("line 14", "unknown split 'banana' (expected train, val or test)")]}[kind]
    assert [(w, r[:len(e)]) for (w, r), (_, e) in zip(bad, expected)] == expected and len(bad) == len(expected)


def test_split_by_image_ignores_row_order(tmp_path, run):
    path, folder, _, _ = _generic(tmp_path, "tsv")
    lines = path.read_text().splitlines()
    shuffled = tmp_path / "mine_shuffled.tsv"
    shuffled.write_text("\n".join([lines[0], *reversed(lines[1:])]) + "\n")
    found = []
    for source in (path, shuffled):
        out = tmp_path / source.stem
        _prep(run, out, "--captions", source, "--image-folder", folder, "--dataset", "same")
        found.append({s: sorted(v) for s, v in _sources(out, "same_5_1").items()})
    assert found[0] == found[1]


def test_format_comes_from_the_content_not_the_name(tmp_path, run, coco, flickr8k):
    train, _, coco_folder = coco
    disguised = tmp_path / "notes.txt"
    disguised.write_text(train.read_text())
    _prep(run, tmp_path / "a", "--captions", disguised, "--image-folder", coco_folder / "train2014",
          "--val-fraction", 0.2, "--test-fraction", 0.2)
    assert _manifest(tmp_path / "a", "coco_5_1")["format"] == "coco"
    token, folder, _ = flickr8k
    renamed = tmp_path / "tokens.csv"
    renamed.write_text(token.read_text())
    _prep(run, tmp_path / "b", "--captions", renamed, "--image-folder", folder, "--dataset", "f8k")
    assert _manifest(tmp_path / "b", "f8k_5_1")["format"] == "flickr8k"


@pytest.mark.parametrize("name", ["../up", "a/b", ".hidden", "", "sp ace"])
def test_unsafe_dataset_names_are_refused(tmp_path, run, name):
    result = run("prep", "--dataset", name, "--output-folder", tmp_path / "o")
    assert result.exit_code == 2 and "not a safe dataset name" in result.output
    assert not (tmp_path / "o").exists()


def test_a_dataset_name_from_the_file_must_be_safe_too(tmp_path, run):
    write_image(tmp_path / "images" / "a.jpg")
    path = tmp_path / "captions.json"
    path.write_text(json.dumps({"dataset": "../../escape", "images": [
        {"filename": "a.jpg", "split": "train", "sentences": [{"tokens": ["a", "dog"]}]}]}))
    result = run("prep", "--captions", path, "--image-folder", tmp_path / "images", "--output-folder", tmp_path / "o")
    assert result.exit_code == 1 and "not a safe dataset name" in result.output and "--dataset NAME" in result.output
    assert not (tmp_path / "escape_5_5").exists() and not (tmp_path / "o").exists()


def test_shapes_writes_references(data):
    manifest = json.load(open(data / "MANIFEST_shapes_5_1.json"))
    source = {e["filename"]: e for e in json.load(open(data / "shapes" / "dataset_shapes.json"))["images"]}
    for split in SPLITS:
        refs = json.load(open(data / f"{split}_REFERENCES_shapes_5_1.json"))
        assert len(refs) == manifest["counts"][split] and f"{split}_REFERENCES_shapes_5_1.json" in manifest["files"]
        for entry, image_refs in zip(manifest["images"][split], refs):
            raw = [s["raw"] for s in source[entry["source"]]["sentences"]]
            assert image_refs == [" ".join(coco_tokenize(r)) for r in raw]


# --- bad files: one line naming file and line; what was prepared stays ---------------------------------


def _bad_files(tmp_path):
    """(format, file, the line its error names) for one broken file of each format."""
    files = {
        "karpathy": ("dataset_x.json", '{"images": [\n  {"filename": "a.jpg",\n   "sentences": [}\n]}\n', 3),
        "coco": ("captions_train2014.json", '{"info": {},\n "images": [{"id": 1, "file_name": "a.jpg"}],\n'
                                            ' "annotations": [{"image_id": 1, "caption": "a dog"\n', 4),
        "flickr8k": ("Flickr8k.token.txt", b"a.jpg#0\ta dog\na.jpg#1\ta cat\na.jpg#2\ta \xff bird\n", 3),
        "kaggle": ("captions.txt", 'image,caption\na.jpg,a dog\na.jpg,"a cat, never closed\nb.jpg,a bird\n', 3),
        "results.csv": ("results.csv", "a.jpg| 0| a dog\n", 1),
        "csv": ("table.csv", "image,score\na.jpg,1\n", 1),
        "tsv": ("table.tsv", "image\tcaption\na.jpg\t\nb.jpg\t   \n", 2),  # no row with a caption
        "jsonl": ("rows.jsonl", '{"image": "a.jpg", "caption": "x"\n{"picture": "b.jpg", "caption": "y"}\n', 1),
    }
    out = {}
    for kind, (name, content, line) in files.items():
        path = tmp_path / "bad" / kind / name
        path.parent.mkdir(parents=True)
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
        out[kind] = (path, line)
    return out


def test_bad_files_are_one_line_errors_and_keep_what_was_prepared(tmp_path, run):
    path, folder, _, _ = _generic(tmp_path, "csv")
    out = tmp_path / "out"
    _prep(run, out, "--captions", path, "--image-folder", folder, "--dataset", "mine")
    before = {n: hashlib.sha256((out / n).read_bytes()).hexdigest() for n in os.listdir(out)}
    assert len(before) == 14  # word map, 4 files per split, manifest
    for kind, (bad, line) in _bad_files(tmp_path).items():
        result = run("prep", "--captions", bad, "--image-folder", folder, "--dataset", "mine", "--force",
                     "--output-folder", out, *FAST)
        lines = result.output.strip().splitlines()
        assert result.exit_code == 1 and len(lines) == 1 and "Traceback" not in result.output, (kind, result.output)
        assert str(bad) in lines[0] and f"line {line}" in lines[0], (kind, lines[0])
        assert {n: hashlib.sha256((out / n).read_bytes()).hexdigest() for n in os.listdir(out)} == before, kind


# --- end to end: prep, train one epoch, evaluate --------------------------------------------------------


def _train_and_evaluate(run, data, models, name):
    tiny = [str(a) for a in TINY_TRAIN]
    result = run("train", "--data-folder", data, "--output-folder", models, "--data-name", name, *tiny,
                 "--no-pretrained", "--epochs", 1)
    assert result.exit_code == 0, result.output
    result = run("evaluate", "-m", models / f"BEST_{name}.pth.tar", "--data-folder", data, "--beams", "1",
                 "--output-folder", models, "--device", "cpu")
    assert result.exit_code == 0, result.output
    evaluation = json.load(open(models / f"evaluation_BEST_{name}_test.json"))
    assert evaluation["images"] == len(json.load(open(data / f"MANIFEST_{name}.json"))["images"]["TEST"]) > 0
    assert set(evaluation["scores"]) == {"1"}


def test_coco_then_train_then_evaluate(tmp_path, run, coco):
    train, val, folder = coco
    data = tmp_path / "data"
    _prep(run, data, "--captions", train, "--captions", val, "--image-folder", folder)
    _train_and_evaluate(run, data, tmp_path / "models", "coco_5_1")


def test_jsonl_then_train_then_evaluate_without_references_files(tmp_path, run):
    path, folder, _, _ = _generic(tmp_path, "jsonl")
    data = tmp_path / "data"
    _prep(run, data, "--captions", path, "--image-folder", folder, "--dataset", "birds")
    for split in SPLITS:  # a folder prepared before REFERENCES existed still trains and evaluates
        os.remove(data / f"{split}_REFERENCES_birds_5_1.json")
    _train_and_evaluate(run, data, tmp_path / "models", "birds_5_1")


def _results_csv(tmp_path):
    folder = tmp_path / "flickr30k_images"
    rows = ["image_name| comment_number| comment"]
    for i in range(10):
        write_image(folder / f"{3000 + i}.jpg", distinct_colour(90 + i))
        rows += [f"{3000 + i}.jpg| {k}| A man number {i} , view {k} ." for k in range(5)]
    (tmp_path / "results.csv").write_text("\n".join(rows) + "\n")
    return tmp_path / "results.csv", folder


@pytest.mark.parametrize("kind", ["flickr8k", "kaggle", "results.csv", "csv", "tsv"])
def test_each_other_format_then_train_then_evaluate(tmp_path, run, request, kind):
    if kind == "flickr8k":
        path, folder, _ = request.getfixturevalue("flickr8k")
    elif kind == "kaggle":
        path, folder = _kaggle(tmp_path)
    elif kind == "results.csv":
        path, folder = _results_csv(tmp_path)
    else:
        path, folder, _, _ = _generic(tmp_path, kind)
    data = tmp_path / "data"
    _prep(run, data, "--captions", path, "--image-folder", folder, "--dataset", "any", "--val-fraction", 0.2,
          "--test-fraction", 0.2)
    _train_and_evaluate(run, data, tmp_path / "models", "any_5_1")
