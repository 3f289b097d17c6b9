"""Writes never leave the output folder: a symlink planted at any name a command writes (the
final name or the old fixed temporary names) is replaced, and the file it points to, outside the
output folder, keeps every byte. Temporary files of a killed writer go with the next write."""

from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess

import h5py

from capcli.paths import data_file_names
from tests.conftest import TINY_TRAIN, karpathy_entry, write_image, write_karpathy

NAME = "shapes_5_1"


def _dead_pid() -> int:
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


class Traps:
    """Symlinks planted in an output folder, each to its own file outside it with known bytes."""

    def __init__(self, outside) -> None:
        self.outside = outside
        os.makedirs(outside, exist_ok=True)
        self.links: dict[str, tuple[str, bytes]] = {}

    def plant(self, path) -> None:
        path = str(path)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        target = os.path.join(self.outside, f"target{len(self.links)}")
        content = f"outside file {len(self.links)} must keep these bytes\n".encode()
        with open(target, "wb") as f:
            f.write(content)
        os.symlink(target, path)
        self.links[path] = (target, content)

    def check(self, finals: list[str]) -> None:
        """Every target untouched; ``finals`` now hold real files; the old temp links are gone."""
        for path, (target, content) in self.links.items():
            with open(target, "rb") as f:
                assert f.read() == content, f"{target} was written through {path}"
        for path in finals:
            assert os.path.isfile(path) and not os.path.islink(path) and os.path.getsize(path) > 0, path
        for path in set(self.links) - set(finals):
            assert not os.path.lexists(path), f"the old temporary name {path} is still there"


def _stale_and_live_temps(folder, name: str) -> tuple[str, str]:
    """A temp of ``name`` left by a dead writer and one of a live writer (this process)."""
    from capcli.safeio import temp_path

    stale = temp_path(os.path.join(str(folder), name), _dead_pid())
    live = temp_path(os.path.join(str(folder), name), os.getpid())
    for path in (stale, live):
        with open(path, "w") as f:
            f.write("left by an interrupted write")
    return stale, live


def test_caption_pictures_replace_links_and_leave_their_targets(trained_run, run, tmp_path):
    _, model_out = trained_run
    out = tmp_path / "pics"
    traps = Traps(tmp_path / "outside")
    names = ["caption_result.png", "attention_visualization.png", "caption_comparison.png"]
    for name in names:
        traps.plant(out / name)
    stale, live = _stale_and_live_temps(out, "caption_result.png")
    image = write_image(tmp_path / "photo.png", size=(40, 30))
    captions = write_karpathy(tmp_path / "dataset_shapes.json", "shapes",
                              [karpathy_entry("photo.png", "test", [["a", "red", "square"]])])
    result = run("caption", image, "-m", model_out / f"BEST_{NAME}.pth.tar", "-v", "-cj", captions,
                 "--output-folder", out)
    assert result.exit_code == 0, result.output
    traps.check([str(out / n) for n in names])
    for name in names:
        with open(out / name, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert not os.path.exists(stale) and os.path.exists(live)


def test_evaluate_json_replaces_links_and_old_partial_names(trained_run, run, tmp_path):
    data, model_out = trained_run
    out = tmp_path / "eval"
    traps = Traps(tmp_path / "outside")
    finals = [str(out / f"evaluation_BEST_{NAME}_test.json"), str(out / f"results_BEST_{NAME}_test_beam1.json")]
    for path in finals:
        traps.plant(path)
        traps.plant(path + ".partial")  # the fixed name write_json used to open
    stale, live = _stale_and_live_temps(out, os.path.basename(finals[0]))
    result = run("evaluate", "-m", model_out / f"BEST_{NAME}.pth.tar", "--data-folder", data, "--beams", 1,
                 "--output-folder", out)
    assert result.exit_code == 0, result.output
    traps.check(finals)
    with open(finals[0]) as f:
        assert json.load(f)["split"] == "test"
    assert not os.path.exists(stale) and os.path.exists(live)


def test_train_overwrite_replaces_links_at_checkpoints_summaries_and_temps(trained_run, run, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(trained_run[0], data)
    features = sorted(glob.glob(str(data / "FEATURES_*.hdf5")))
    assert features  # the fixture's run cached them; this run must write them again
    out = tmp_path / "out"
    traps = Traps(tmp_path / "outside")
    finals = [str(out / f"checkpoint_{NAME}.pth.tar"), str(out / f"BEST_{NAME}.pth.tar")]
    summaries = [str(out / f"bleu_scores_{NAME}.json"), str(out / f"training_metrics_{NAME}.json")]
    for path in finals + summaries:
        traps.plant(path)
    for path in summaries + features:
        traps.plant(path + ".partial")
    traps.plant(out / ".partial-k3j9x2.pth.tar")  # the old checkpoint temporary name (tempfile.mkstemp)
    for path in features:
        os.remove(path)
    stale, live = _stale_and_live_temps(out, f"checkpoint_{NAME}.pth.tar")
    result = run("train", "--data-folder", data, "--output-folder", out, *TINY_TRAIN, "--epochs", 1, "--overwrite")
    assert result.exit_code == 0, result.output
    traps.check(finals + summaries + features)
    from capcli.store.checkpoint import load_checkpoint

    assert load_checkpoint(finals[1])["epoch"] == 1
    with h5py.File(features[0], "r") as f:
        assert f["features"].shape[0] == 32
    assert not os.path.exists(stale) and os.path.exists(live)
    assert sorted(glob.glob(str(out / ".*.tmp"))) == [live]  # no temporary file of this run is left


def test_prep_replaces_links_at_every_output_and_generated_image(run, tmp_path):
    out = tmp_path / "data"
    traps = Traps(tmp_path / "outside")
    finals = [str(out / n) for n in data_file_names(NAME).values()]
    generated = [str(out / "shapes" / "dataset_shapes.json")] + \
        [str(out / "shapes" / "images" / f"shapes_{i:06d}.jpg") for i in range(10)]
    for path in finals + generated:
        traps.plant(path)
    traps.plant(generated[0] + ".partial")  # prep writes its own outputs in a staging folder
    stale, live = _stale_and_live_temps(out / "shapes" / "images", "shapes_000003.jpg")
    result = run("prep", "--output-folder", out, "--num-images", 10, "--image-size", 32, "--min-word-freq", 1,
                 "--workers", 1, "--force")
    assert result.exit_code == 0, result.output
    traps.check(finals + generated)
    with open(out / f"MANIFEST_{NAME}.json") as f:
        assert sum(json.load(f)["counts"].values()) == 10
    with open(generated[1], "rb") as f:
        assert f.read(2) == b"\xff\xd8"  # a JPEG
    assert not os.path.exists(stale) and os.path.exists(live)


def test_prep_never_opens_an_image_named_outside_the_image_folder(run, tmp_path):
    folder = tmp_path / "images"
    splits = ["train", "train", "train", "val", "test"]
    for i in range(5):
        write_image(folder / f"{i}.jpg", (40 * i, 20, 20))
    outside = write_image(tmp_path / "outside.jpg", (250, 250, 250))  # a good image: read, it would be kept
    entries = [karpathy_entry(f"{i}.jpg", s, [["a", "dog", str(i)]]) for i, s in enumerate(splits)]
    climbing = [karpathy_entry("../outside.jpg", "train", [["a", "secret"]]),
                karpathy_entry(outside, "train", [["a", "secret"]]),  # an absolute path
                karpathy_entry("outside.jpg", "train", [["a", "secret"]], filepath="sub/../.."),
                karpathy_entry("outside.jpg", "val", [["a", "secret"]], filepath=str(tmp_path))]
    source = write_karpathy(tmp_path / "dataset_flickr8k.json", "flickr8k", entries + climbing)
    out = tmp_path / "out"
    result = run("prep", "--dataset", "flickr8k", "--captions", source, "--image-folder", folder,
                 "--output-folder", out, "--min-word-freq", 1, "--image-size", 32, "--workers", 1)
    assert result.exit_code == 0, result.output
    with open(out / "MANIFEST_flickr8k_5_1.json") as f:
        manifest = json.load(f)
    assert manifest["counts"] == {"TRAIN": 3, "VAL": 1, "TEST": 1}
    skipped = {s["source"]: s["reason"] for s in manifest["skipped"]}
    refs = ["../outside.jpg", outside, "sub/../../outside.jpg", os.path.join(str(tmp_path), "outside.jpg")]
    assert skipped == {ref: "path outside --image-folder" for ref in refs}
    kept = [e["path"] for split in manifest["images"].values() for e in split]
    assert not [p for p in kept if "outside" in p]
    with open(out / "WORDMAP_flickr8k_5_1.json") as f:
        assert "secret" not in json.load(f)  # its captions were not used either


def test_a_results_csv_name_outside_the_image_folder_gets_no_path(tmp_path):
    from capcli.data.sources import read_results_csv

    csv_path = tmp_path / "results.csv"
    csv_path.write_text("image_name| comment_number| comment\n0.jpg| 0| a dog\n../x.jpg| 0| a cat\n"
                        "/etc/passwd| 0| a file\nsub/../1.jpg| 0| a bird\n")
    images = {i.ref: i for i in read_results_csv(str(csv_path), str(tmp_path / "images"), 0, 0.0, 0.0)}
    assert images["../x.jpg"].path == "" and images["../x.jpg"].problem == "path outside --image-folder"
    assert images["/etc/passwd"].path == "" and images["/etc/passwd"].problem == "path outside --image-folder"
    assert images["0.jpg"].problem is None and images["0.jpg"].path == str(tmp_path / "images" / "0.jpg")
    assert images["sub/../1.jpg"].problem is None  # ".." that stays inside the folder is fine


def test_only_temps_of_dead_writers_on_this_host_are_removed(tmp_path):
    from capcli import safeio
    from capcli.data.jsonfiles import write_json

    dead = _dead_pid()
    other_host = "0" * 8 if safeio._HOST != "0" * 8 else "1" * 8
    kept = [tmp_path / f".a.json.{other_host}-{dead}.00000000.tmp",  # a writer on another machine (NFS)
            tmp_path / ".a.json.99999999999999999999.x.tmp",  # not capcli's pattern: left alone
            tmp_path / f".b.json.{safeio._HOST}-99999999999.00000000.tmp"]  # a pid beyond any machine's: not capcli's
    gone = safeio.temp_path(str(tmp_path / "b.json"), dead)
    for path in [*kept, gone]:
        open(path, "w").close()
    write_json(str(tmp_path / "a.json"), {"x": 1})
    assert all(path.exists() for path in kept) and not os.path.exists(gone)
    assert json.load(open(tmp_path / "a.json")) == {"x": 1}
