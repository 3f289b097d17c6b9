"""``capcli evaluate`` against the raw references (the REFERENCES file prep writes), its scores equal
to pycocoevalcap's on the same inputs, what its JSON records, and METEOR / SPICE: run for real
where Java and pycocoevalcap are, one line each where they cannot run."""

import json
import os
import shutil

import pytest

from capcli.data.hdf5 import CAPTION_ROWS, RAW_REFERENCES, find_prepared
from capcli.data.vocab import Detokenizer
from capcli.evaluation import java_metrics
from capcli.paths import references_file

NAME = "shapes_5_1"
HAVE_COCO = java_metrics.coco_installed()


@pytest.fixture
def evaluated(trained_run, tmp_path):
    """(data copy with a TEST_REFERENCES file, the model, an empty output folder, the references written)."""
    data, out = trained_run
    data_copy = tmp_path / "data"
    shutil.copytree(data, data_copy, ignore=shutil.ignore_patterns("shapes"))
    prepared = find_prepared(str(data_copy))
    rows, _ = prepared.captions("TEST")
    words = Detokenizer(prepared.word_map())
    count = len(rows) // 5
    # each image's caption rows and one more (raw references need not number captions_per_image)
    references = [[" ".join(words(r)) for r in rows[i * 5:(i + 1) * 5]] + ["a shape on a plain background"]
                  for i in range(count)]
    with open(references_file(str(data_copy), NAME, "TEST"), "w") as f:
        json.dump(references, f)
    return data_copy, str(out / f"BEST_{NAME}.pth.tar"), tmp_path / "eval", references


def _evaluate(run, data, model, out, *extra):
    return run("evaluate", "--data-folder", data, "--output-folder", out, "-m", model, "--precision", "fp32",
               *extra)


@pytest.mark.skipif(not HAVE_COCO, reason="pycocoevalcap is not installed (the test extra)")
def test_scores_against_raw_references_equal_pycocoevalcap(evaluated, run):
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    data, model, out, references = evaluated
    result = _evaluate(run, data, model, out, "--beams", "1,3", "--metrics", "bleu,rouge,cider",
                       "--length-penalty", "0.5")
    assert result.exit_code == 0, result.output
    assert "METEOR" not in result.output and "java" not in result.output.lower()  # not asked for: no line
    report = json.load(open(out / f"evaluation_BEST_{NAME}_test.json"))
    gts = {i: refs for i, refs in enumerate(references)}
    for k in (1, 3):
        captions = [r["caption"] for r in json.load(open(out / f"results_BEST_{NAME}_test_beam{k}.json"))]
        res = {i: [c] for i, c in enumerate(captions)}
        scores = report["scores"][str(k)]
        expected = dict(zip(("bleu1", "bleu2", "bleu3", "bleu4"), Bleu(4).compute_score(gts, res, verbose=0)[0]))
        expected["rouge_l"] = float(Rouge().compute_score(gts, res)[0])
        expected["cider_d"] = float(Cider().compute_score(gts, res)[0])
        assert set(scores) == set(expected)
        for key, value in expected.items():
            assert scores[key] == pytest.approx(value, abs=1e-6), key
    assert report["checkpoint"] == os.path.abspath(model)
    assert report["decoding"] == {"beams": [1, 3], "length_penalty": 0.5, "max_len": report["decoding"]["max_len"],
                                  "banned": ["<pad>", "<start>", "<unk>"]}
    assert report["decoding"]["max_len"] > 0
    assert report["references"]["file"] == references_file(str(data), NAME, "TEST")
    assert report["references"]["tokenization"] == RAW_REFERENCES
    assert report["references"]["per_image"]["max"] == 6
    assert report["metrics"] == {"ran": ["bleu", "rouge", "cider"], "not_run": {}, "java": None}


def test_old_prepared_folder_scores_against_caption_rows(trained_run, run, tmp_path):
    data, out = trained_run
    old = tmp_path / "data"  # as prepared before REFERENCES files
    shutil.copytree(data, old, ignore=shutil.ignore_patterns("images", "*_REFERENCES_*"))
    assert not os.path.exists(references_file(str(old), NAME, "TEST"))
    result = _evaluate(run, old, str(out / f"BEST_{NAME}.pth.tar"), tmp_path / "eval", "--beams", "1",
                       "--metrics", "bleu,cider")
    assert result.exit_code == 0, result.output
    report = json.load(open(tmp_path / "eval" / f"evaluation_BEST_{NAME}_test.json"))
    assert report["references"]["tokenization"] == CAPTION_ROWS
    assert report["references"]["per_image"] == {"min": 5, "max": 5, "mean": 5.0}
    assert set(report["scores"]["1"]) == {"bleu1", "bleu2", "bleu3", "bleu4", "cider_d"}


def test_bad_metrics_and_bad_references_file(evaluated, run):
    data, model, out, _ = evaluated
    result = _evaluate(run, data, model, out, "--metrics", "bleu,blue")
    assert result.exit_code == 2 and "bleu,meteor,rouge,cider,spice" in result.output
    with open(references_file(str(data), NAME, "TEST"), "w") as f:
        json.dump([["a caption"]], f)  # fewer entries than test images
    result = _evaluate(run, data, model, out, "--metrics", "bleu")
    assert result.exit_code == 1 and "TEST_REFERENCES" in result.output and "Traceback" not in result.output


def test_missing_java_and_missing_extra_are_one_line_each(evaluated, run, monkeypatch, tmp_path):
    data, model, out, _ = evaluated
    empty = tmp_path / "no-java"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    monkeypatch.delenv("JAVA_HOME", raising=False)
    monkeypatch.setattr(java_metrics, "coco_installed", lambda: True)
    result = _evaluate(run, data, model, out, "--beams", "1")  # default: every metric that can run
    assert result.exit_code == 0, result.output
    notes = [line for line in result.output.splitlines() if "not run" in line]
    assert notes == ["METEOR and SPICE not run: no java on PATH or in JAVA_HOME "
                     f"({java_metrics.GET_JAVA}; `capcli env` shows the Java found)"]
    assert "BLEU4" in result.output and "CIDER-D" in result.output and "ROUGE-L" in result.output
    report = json.load(open(out / f"evaluation_BEST_{NAME}_test.json"))
    assert report["metrics"]["ran"] == ["bleu", "rouge", "cider"] and set(report["metrics"]["not_run"]) == {
        "meteor", "spice"}
    monkeypatch.setattr(java_metrics, "coco_installed", lambda: False)
    result = _evaluate(run, data, model, out, "--beams", "1", "--metrics", "meteor,bleu")
    assert result.exit_code == 0 and "BLEU4" in result.output
    assert [line for line in result.output.splitlines() if "not run" in line] == [
        "METEOR not run: pycocoevalcap is not installed (pip install 'capcli[coco]')"]


def test_java_from_java_home(monkeypatch, tmp_path):
    home = tmp_path / "jdk"
    (home / "bin").mkdir(parents=True)
    java = home / "bin" / "java"
    java.write_text("#!/bin/sh\necho 'openjdk version \"99\"' >&2\n")
    java.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path / "nothing"))
    monkeypatch.setenv("JAVA_HOME", str(home))
    assert java_metrics.find_java() == str(java)
    assert java_metrics.java_version(str(java)) == 'openjdk version "99"'


def _java_children() -> list[str]:
    """The command lines of this process's child processes that run java."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as f:
                parent = int(f.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                command = f.read().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, IndexError, ValueError):
            continue
        if parent == os.getpid() and "java" in command:
            found.append(command)
    return found


@pytest.mark.skipif(not HAVE_COCO or java_metrics.find_java() is None, reason="needs pycocoevalcap and Java")
def test_meteor_for_real_and_spice_in_one_line(evaluated, run, monkeypatch):
    from pycocoevalcap.meteor.meteor import Meteor
    from pycocoevalcap.spice import get_stanford_models

    def offline(*args, **kwargs):
        raise OSError("<urlopen error [Errno -3] Temporary failure in name resolution>")

    monkeypatch.setattr(get_stanford_models, "urlretrieve", offline)  # never a 1 GB download from a test
    data, model, out, references = evaluated
    result = _evaluate(run, data, model, out, "--beams", "1", "--metrics", "bleu,meteor,spice")
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output
    report = json.load(open(out / f"evaluation_BEST_{NAME}_test.json"))
    version = java_metrics.java_version(java_metrics.find_java())
    assert report["metrics"]["java"] == {"path": java_metrics.find_java(), "version": version}
    assert f"Java metrics ran on {version}" in result.output
    print(f"METEOR ran on {version}")  # which Java ran it, in the test log (-s)
    captions = [r["caption"] for r in json.load(open(out / f"results_BEST_{NAME}_test_beam1.json"))]
    scorer = Meteor()
    try:
        expected = scorer.compute_score(dict(enumerate(references)), {i: [c] for i, c in enumerate(captions)})[0]
    finally:
        java_metrics._close_meteor(scorer)
    assert report["scores"]["1"]["meteor"] == pytest.approx(expected, abs=1e-6)
    assert 0.0 <= expected <= 1.0
    if "spice" in report["metrics"]["ran"]:  # the CoreNLP models were already there and this Java runs it
        assert 0.0 <= report["scores"]["1"]["spice"] <= 1.0
    else:
        spice_lines = [line for line in result.output.splitlines() if "SPICE" in line]
        assert len(spice_lines) == 1 and spice_lines[0].startswith("SPICE not run: ")
        assert report["metrics"]["not_run"]["spice"] == spice_lines[0]
    assert _java_children() == []  # no METEOR or SPICE JVM left behind


def test_validation_scores_against_the_val_references_file(data, tmp_path, run, monkeypatch):
    from capcli.training import train
    from tests.conftest import TINY_TRAIN

    data_copy = tmp_path / "data"  # with the shapes set's record (dataset_shapes.json): --complete-captions reads it
    shutil.copytree(data, data_copy, ignore=shutil.ignore_patterns("images"))
    prepared = find_prepared(str(data_copy))
    count = len(prepared.captions("VAL")[0]) // 5
    references = [[f"raw reference {i} one", f"raw reference {i} two"] for i in range(count)]
    with open(references_file(str(data_copy), NAME, "VAL"), "w") as f:
        json.dump(references, f)
    seen = []

    def spy(refs, hyps, n_max=4):
        seen.append(refs)
        return real(refs, hyps, n_max)

    real = train.bleu
    monkeypatch.setattr(train, "bleu", spy)
    result = run("train", "--data-folder", data_copy, "--output-folder", tmp_path / "out", *TINY_TRAIN, "--epochs", 1)
    assert result.exit_code == 0, result.output
    assert seen == [[[r.split() for r in refs] for refs in references]]
