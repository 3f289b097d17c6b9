"""`capcli caption` and `capcli evaluate` on a tiny trained shapes model."""

from __future__ import annotations

import json
import os
import shutil

import pytest
import torch
from PIL import Image

from capcli.data.hdf5 import find_prepared
from capcli.data.vocab import Detokenizer
from capcli.evaluation.scores import all_scores

NAME = "shapes_5_1"


@pytest.fixture
def trained(trained_run):
    return trained_run


def _images(data):
    folder = data / "shapes" / "images"
    return folder, sorted(str(folder / f) for f in os.listdir(folder))


def test_caption_one_image_with_the_default_model(trained, run, tmp_path):
    data, out = trained
    _, images = _images(data)
    result = run("caption", images[0], "--beam", 10, "--output-folder", out)
    assert result.exit_code == 0, result.output
    caption = result.stdout.strip()
    word_map = json.load(open(data / f"WORDMAP_{NAME}.json"))
    assert caption and all(w in word_map for w in caption.split())
    assert "<" not in caption
    assert Image.open(out / "caption_result.png").size[0] >= 384


def test_several_images_folder_json_and_pictures(trained, run, tmp_path):
    data, out = trained
    folder, images = _images(data)
    pictures = tmp_path / "pics"
    shutil.copytree(out, pictures)
    result = run("caption", images[0], images[1], "--json", "-v", "-cj", data / "shapes" / "dataset_shapes.json",
                 "--output-folder", pictures, "-b", 3)
    assert result.exit_code == 0, result.output
    listed = json.loads(result.stdout)
    assert [r["image"] for r in listed] == images[:2]
    assert all(set(r) == {"image", "caption", "score"} and r["score"] <= 0 for r in listed)
    for image in images[:2]:
        stem = os.path.splitext(os.path.basename(image))[0]
        for kind in ("caption_result", "attention_visualization", "caption_comparison"):
            assert (pictures / f"{kind}_{stem}.png").exists(), (kind, stem)
    # a folder gives every image in it, in name order
    result = run("caption", folder, "--json", "--no-pictures", "--output-folder", out, "--beam", 1)
    assert result.exit_code == 0, result.output
    assert [r["image"] for r in json.loads(result.stdout)] == images
    # -i and the seed's underscore spellings work too
    result = run("caption", "-i", images[2], "--beam_size", 2, "-m", out / f"BEST_{NAME}.pth.tar",
                 "--word_map", data / f"WORDMAP_{NAME}.json", "--no-pictures")
    assert result.exit_code == 0, result.output


def test_bad_file_among_good_ones(trained, run, tmp_path):
    data, out = trained
    _, images = _images(data)
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not a jpeg at all")
    result = run("caption", images[0], bad, images[1], "--json", "--no-pictures", "--output-folder", out)
    assert result.exit_code == 1
    listed = json.loads(result.stdout)
    assert [("caption" in r) for r in listed] == [True, False, True]
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error")]
    assert len(errors) == 1 and "broken.jpg" in errors[0]
    assert "Traceback" not in result.output


def test_missing_foreign_and_ambiguous_checkpoints(trained, run, tmp_path):
    data, out = trained
    _, images = _images(data)
    for bad_model, expected in ((tmp_path / "none.pth.tar", "no such checkpoint"),
                                (tmp_path / "foreign.pth.tar", "not a capcli checkpoint"),
                                (tmp_path / "text.pth.tar", "truncated or corrupt")):
        if "foreign" in bad_model.name:
            torch.save({"state_dict": {}}, bad_model)
        elif "text" in bad_model.name:
            bad_model.write_text("hello")
        result = run("caption", images[0], "-m", bad_model)
        assert result.exit_code == 1 and expected in result.output, result.output
        assert len(result.output.strip().splitlines()) == 1
    empty = tmp_path / "empty"
    empty.mkdir()
    result = run("caption", images[0], "--output-folder", empty)
    assert result.exit_code == 1 and "no BEST_*.pth.tar" in result.output
    two = tmp_path / "two"
    shutil.copytree(out, two)
    shutil.copy(two / f"BEST_{NAME}.pth.tar", two / "BEST_other.pth.tar")
    result = run("caption", images[0], "--output-folder", two)
    assert result.exit_code == 1 and "BEST_other.pth.tar" in result.output and f"BEST_{NAME}" in result.output
    wrong_map = tmp_path / "wm.json"
    wrong_map.write_text(json.dumps({"<pad>": 0, "cat": 1}))
    result = run("caption", images[0], "--output-folder", out, "-wm", wrong_map)
    assert result.exit_code == 1 and "differs" in result.output


def test_evaluate_table_files_and_agreement_with_caption(trained, run, tmp_path):
    data, shared = trained
    out = tmp_path / "out"  # evaluate writes beside the model: a copy, the session's fixture stays as trained
    shutil.copytree(shared, out)
    result = run("evaluate", "--data-folder", data, "--output-folder", out, "--beams", "1,3,5", "--precision", "fp32",
                 "--metrics", "bleu,cider,rouge")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.split()[:1] == ["beam"])
    assert [line.split()[0] for line in lines[header + 2:header + 5]] == ["1", "3", "5"]
    for name in ("BLEU1", "BLEU4", "CIDER-D", "ROUGE-L"):
        assert name in lines[header]
    report = json.load(open(out / f"evaluation_BEST_{NAME}_test.json"))
    prepared = find_prepared(str(data))
    test_count = prepared.images_meta("TEST")
    rows, _ = prepared.captions("TEST")
    words = Detokenizer(prepared.word_map())
    references = [[words(r) for r in rows[i * 5:(i + 1) * 5]] for i in range(len(rows) // 5)]
    assert report["images"] == len(references) == 4 and test_count[0] == 5
    for k in (1, 3, 5):
        results = json.load(open(out / f"results_BEST_{NAME}_test_beam{k}.json"))
        assert len(results) == len(references)  # one caption per image, not per caption row
        assert all(set(r) == {"image_id", "caption"} for r in results)
        # the reported scores are those of the written captions
        recomputed = all_scores(references, [r["caption"].split() for r in results])
        assert recomputed == pytest.approx(report["scores"][str(k)])
        # the table shows the same numbers
        row = lines[header + 2 + (1, 3, 5).index(k)].split()
        assert float(row[4]) == pytest.approx(report["scores"][str(k)]["bleu4"], abs=1e-4)
    # `capcli caption` on the test images' files gives the captions evaluate wrote
    beam3 = json.load(open(out / f"results_BEST_{NAME}_test_beam3.json"))
    files = [str(data / "shapes" / "images" / r["image_id"]) for r in beam3]
    result = run("caption", *files, "--json", "--no-pictures", "--output-folder", out, "--beam", 3,
                 "--precision", "fp32")
    assert [r["caption"] for r in json.loads(result.stdout)] == [r["caption"] for r in beam3]


def test_evaluate_bad_input(trained, run, tmp_path):
    data, out = trained
    assert run("evaluate", "--data-folder", data, "--output-folder", out, "--beams", "0").exit_code == 2
    result = run("evaluate", "--data-folder", tmp_path / "nothing", "--output-folder", out)
    assert result.exit_code == 1 and "no such folder" in result.output


def test_images_with_the_same_name_get_their_own_pictures(trained, run, tmp_path):
    data, out = trained
    _, images = _images(data)
    for folder, source in (("a", images[0]), ("b", images[1])):
        (tmp_path / folder).mkdir()
        shutil.copy(source, tmp_path / folder / "photo.jpg")
    pictures = tmp_path / "pics"
    result = run("caption", tmp_path / "a" / "photo.jpg", tmp_path / "b" / "photo.jpg", "-m",
                 out / f"BEST_{NAME}.pth.tar", "--output-folder", pictures)
    assert result.exit_code == 0, result.output
    assert sorted(os.listdir(pictures)) == ["caption_result_photo.png", "caption_result_photo_2.png"]
