"""`capcli export`: a checkpoint → an inference bundle that captions and evaluates byte for byte like
its checkpoint; torn or hand-edited bundles get one line; and the checkpoint metadata sidecar."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

from capcli.paths import BUNDLE_FILES, checkpoint_meta_file
from capcli.store.files import read_checkpoint
from capcli.store.sidecar import read_meta
from tests.test_terminal import run_in_terminal

NAME = "shapes_5_1"
BEST = f"BEST_{NAME}.pth.tar"
BUNDLE = f"BEST_{NAME}.bundle"


@pytest.fixture(scope="module")
def exported(trained_run, tmp_path_factory):
    """(data, run folder copy, the `capcli export` process) after exporting the run's BEST checkpoint."""
    data, out = trained_run
    run_folder = tmp_path_factory.mktemp("export") / "out"
    shutil.copytree(out, run_folder)
    done = _capcli("export", "--output-folder", run_folder)
    assert done.returncode == 0, done.stderr
    return data, run_folder, done


def _capcli(*args, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "capcli.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=300)


def _images(data) -> list[str]:
    folder = data / "shapes" / "images"
    return sorted(str(folder / f) for f in os.listdir(folder))[:6]


def _one_error_line(result) -> str:
    """The command failed with exit 1 and one line of error, no traceback."""
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    return lines[0]


def test_export_writes_a_bundle_without_optimizer_state_and_reports_both_sizes(exported):
    _, out, done = exported
    bundle, checkpoint = out / BUNDLE, out / BEST
    assert sorted(os.listdir(bundle)) == sorted(BUNDLE_FILES.values())
    tensors = load_file(bundle / "model.safetensors")
    ckpt = read_checkpoint(str(checkpoint))
    expected = {f"encoder.{k}" for k in ckpt.encoder} | {f"decoder.{k}" for k in ckpt.decoder}
    assert set(tensors) == expected  # the model's weights, nothing of the optimiser, critic or scaler
    for key, value in ckpt.decoder.items():
        assert torch.equal(tensors[f"decoder.{key}"], value)
    bundle_bytes = sum(os.path.getsize(bundle / f) for f in BUNDLE_FILES.values())
    optimizer_bytes = sum(v.nbytes for s in ckpt.decoder_optimizer["state"].values() for v in s.values()
                          if isinstance(v, torch.Tensor))
    assert 0 < optimizer_bytes and bundle_bytes < os.path.getsize(checkpoint)
    # both sizes printed, and the optimiser state's share of the checkpoint
    mb = lambda n: f"{n / 1e6:.1f} MB"  # noqa: E731
    assert re.search(rf"checkpoint +{re.escape(mb(os.path.getsize(checkpoint)))} .*{BEST}\n +optimizer state "
                     rf"{re.escape(mb(optimizer_bytes))} \(\d+%\)\n", done.stdout), done.stdout
    assert re.search(rf"bundle +{re.escape(mb(bundle_bytes))}  \d+% of the checkpoint", done.stdout), done.stdout
    assert f"wrote {out / BUNDLE} " in done.stdout
    config = json.loads((bundle / "config.json").read_text())
    assert config["format"] == "capcli-bundle" and config["version"] == 1 and config["stage"] == "train"
    assert config["model_config"] == json.loads((out / f"BEST_{NAME}.meta.json").read_text())["model_config"]
    assert (config["image_size"], config["max_len"], config["data"]["name"]) == (32, ckpt.max_len, NAME)
    assert config["source"]["checkpoint"] == os.path.abspath(checkpoint)
    assert config["training"]["epochs_done"] == 1 and config["training"]["best_epoch"] == 1
    assert config["training"]["validation"][0]["bleu4"] == ckpt.state.epochs[0].val_bleu4
    assert config["tokenization"]["special"]["<start>"] == ckpt.word_map["<start>"]
    assert json.loads((bundle / "word_map.json").read_text()) == ckpt.word_map
    card = (bundle / "README.md").read_text()
    for text in ("## Architecture", "resnet18", "## Data and training", "1 of 1 epochs", "| 1 (best) |",
                 f"capcli caption photo.jpg -m {BUNDLE}", "capcli evaluate -m", "## Test scores"):
        assert text in card, text
    assert not [e for e in os.listdir(out) if e.endswith(".tmp")]  # no staging folder left


def test_bundle_captions_byte_for_byte_like_its_checkpoint(exported):
    data, out, _ = exported
    images = _images(data)
    printed = {}
    for model in (out / BEST, out / BUNDLE, out / BUNDLE / "model.safetensors"):
        for extra in ((), ("--json",)):
            done = _capcli("caption", *images, "-m", model, "--beam", 3, "--no-pictures", *extra)
            assert done.returncode == 0, done.stderr
            printed.setdefault(extra, []).append(done.stdout)
    for outputs in printed.values():
        assert outputs[0] and outputs[0] == outputs[1] == outputs[2]
    assert len(json.loads(printed[("--json",)][0])) == len(images)


def _terminal_captions(output: str) -> list[str]:
    """The caption lines a terminal shows (tqdm's redrawn bar lines left out)."""
    lines = [line.rsplit("\r", 1)[-1] for line in output.replace("\r\n", "\n").split("\n")]
    return [line for line in lines if ": " in line and not line.startswith(("captioning", "wrote"))]


def test_export_and_caption_in_a_terminal(exported, tmp_path):
    data, out, _ = exported
    shutil.copy(out / BEST, tmp_path / BEST)
    rc, output = run_in_terminal("export", "-m", BEST, "-o", "shipped", cwd=tmp_path)
    assert rc == 0 and "Traceback" not in output, output
    assert "checkpoint" in output and "bundle" in output and "optimizer state" in output
    images = _images(data)[:3]
    seen = []
    for model in (BEST, "shipped"):
        rc, output = run_in_terminal("caption", *images, "-m", model, "--no-pictures", cwd=tmp_path)
        assert rc == 0 and "Traceback" not in output, output
        seen.append(_terminal_captions(output))
    assert len(seen[0]) == 3 and seen[0] == seen[1]


def test_evaluate_scores_equal_and_the_card_shows_them(exported, run):
    data, out, _ = exported
    scores = {}
    for model, stem in ((BEST, f"BEST_{NAME}"), (BUNDLE, f"BEST_{NAME}_bundle")):  # one evaluation file each
        result = run("evaluate", "-m", out / model, "--data-folder", data, "--output-folder", out, "--split", "test",
                     "--beams", "1,2", "--metrics", "bleu,rouge,cider")
        assert result.exit_code == 0, result.output
        scores[model] = json.loads((out / f"evaluation_{stem}_test.json").read_text())["scores"]
    assert scores[BEST] == scores[BUNDLE] and set(scores[BEST]) == {"1", "2"}
    # exported again: the card shows the checkpoint's test scores (not the bundle's own evaluation)
    result = run("export", "-m", out / BEST)
    assert result.exit_code == 0, result.output
    assert f"model card: test scores of {out / f'evaluation_BEST_{NAME}_test.json'}" in result.output
    assert "bundle_test" not in result.output
    card = (out / BUNDLE / "README.md").read_text()
    assert f"`evaluation_BEST_{NAME}_test.json`: split test" in card
    assert f"| 2 | {scores[BEST]['2']['bleu1']:.4f} |" in card


def _edited_bundle(exported, tmp_path, case: str):
    folder = tmp_path / "edited.bundle"
    shutil.copytree(exported[1] / BUNDLE, folder)
    weights, config = folder / "model.safetensors", folder / "config.json"
    tensors = load_file(weights)
    if case == "missing tensor":
        tensors.pop("decoder.fc.weight")
        save_file(tensors, weights)
    elif case == "wrong shape":
        tensors["decoder.fc.weight"] = tensors["decoder.fc.weight"][:-1].clone()
        save_file(tensors, weights)
    elif case == "foreign tensor":
        tensors["critic.value.weight"] = torch.zeros(2)
        save_file(tensors, weights)
    elif case == "torn weights":
        data = weights.read_bytes()
        weights.write_bytes(data[:len(data) // 2])
    elif case == "bad json":
        config.write_text(config.read_text()[:50])
    elif case == "edited config":
        raw = json.loads(config.read_text())
        raw["model_config"]["decoder_dim"] += 1
        config.write_text(json.dumps(raw))
    elif case == "word map without <end>":
        word_map = json.loads((folder / "word_map.json").read_text())
        del word_map["<end>"]
        (folder / "word_map.json").write_text(json.dumps(word_map))
    elif case == "no word map":
        os.remove(folder / "word_map.json")
    return folder


EDITS = {"missing tensor": "do not fit model_config (1 missing", "wrong shape": "fc.weight has shape",
         "foreign tensor": "critic.value.weight is neither", "torn weights": "not a readable safetensors file",
         "bad json": "config.json: malformed JSON", "edited config": "does not fit model_config",
         "word map without <end>": "word_map.json: word map has no <end>", "no word map": "word_map.json: no such file"}


@pytest.mark.parametrize("case", list(EDITS))
def test_a_torn_or_hand_edited_bundle_is_one_line(exported, tmp_path, run, case):
    folder = _edited_bundle(exported, tmp_path, case)
    image = _images(exported[0])[0]
    for model in (folder, folder / "model.safetensors"):
        line = _one_error_line(run("caption", image, "-m", model, "--no-pictures"))
        assert EDITS[case] in line and str(folder) in line, line


def test_export_refuses_links_and_what_is_not_a_bundle(exported, tmp_path, run):
    _, out, _ = exported
    (tmp_path / "target").mkdir()
    os.symlink(tmp_path / "target", tmp_path / "link.bundle")
    assert "symbolic link" in _one_error_line(run("export", "-m", out / BEST, "-o", tmp_path / "link.bundle"))
    assert os.listdir(tmp_path / "target") == []
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "mine.txt").write_text("keep")
    assert "is not a capcli bundle" in _one_error_line(run("export", "-m", out / BEST, "-o", tmp_path / "notes"))
    (tmp_path / "file").write_text("keep")
    assert "is not a capcli bundle" in _one_error_line(run("export", "-m", out / BEST, "-o", tmp_path / "file"))
    assert (tmp_path / "notes" / "mine.txt").read_text() == (tmp_path / "file").read_text() == "keep"
    assert "already a bundle" in _one_error_line(run("export", "-m", out / BUNDLE))
    # a previous bundle is replaced
    result = run("export", "-m", out / BEST, "-o", tmp_path / "ship")
    assert result.exit_code == 0, result.output
    (tmp_path / "ship" / "README.md").write_text("old card")
    result = run("export", "-m", out / BEST, "-o", tmp_path / "ship")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "ship" / "README.md").read_text().startswith("# ship")
    assert sorted(os.listdir(tmp_path)) == ["file", "link.bundle", "notes", "ship", "target"]


def test_a_bundle_never_resumes_and_loads_as_a_checkpoint(exported, run, tmp_path):
    from capcli.dashboard.checkpoints import read_checkpoint_info
    from capcli.inference.captioning import load_captioner

    data, out, _ = exported
    line = _one_error_line(run("train", "--data-folder", data, "--output-folder", tmp_path, "--checkpoint",
                               out / BUNDLE / "model.safetensors", "--epochs", 2))
    assert "cannot be resumed" in line and os.path.abspath(out / BEST) in line
    captioner = load_captioner(str(out / BUNDLE / "model.safetensors"))
    assert captioner.path == str(out / BUNDLE) and captioner.checkpoint.stage == "train"
    info = read_checkpoint_info(str(out / BUNDLE), 0.0)  # the dashboard's checkpoint row
    ckpt = read_checkpoint(str(out / BEST))
    assert (info.epoch, info.best_bleu4, info.total_epochs) == (1, ckpt.state.epochs[0].val_bleu4, 1)
    assert info.best_cider_d == ckpt.state.epochs[0].val_cider_d and not info.from_sidecar
    assert "total" in run("arch", "-m", out / BUNDLE).output


def test_an_a2c_checkpoint_exports_and_captions_alike(exported, run, tmp_path):
    data, out, _ = exported
    folder = tmp_path / "run"
    shutil.copytree(out, folder, ignore=shutil.ignore_patterns("*.bundle"))
    result = run("a2c", "--checkpoint", folder / BEST, "--data-folder", data, "--output-folder", folder,
                 "--epochs", 1, "--batch-size", 16)
    assert result.exit_code == 0, result.output
    a2c = folder / f"BEST_A2C_{NAME}.pth.tar"
    meta = read_meta(str(a2c))
    ckpt = read_checkpoint(str(a2c))
    assert meta["stage"] == "a2c" and meta["monitor"] == "cider" and meta["epoch"] == 1
    assert meta["best_cider_d"] == ckpt.state.epochs[0].val_cider_d == meta["best_score"]
    result = run("export", "-m", a2c, "-o", tmp_path / "a2c")
    assert result.exit_code == 0, result.output
    assert "critic" in result.output
    assert not any(k.startswith("critic") for k in load_file(tmp_path / "a2c" / "model.safetensors"))
    assert json.loads((tmp_path / "a2c" / "config.json").read_text())["stage"] == "a2c"
    images = _images(data)[:3]
    printed = [run("caption", *images, "-m", model, "--json", "--no-pictures").stdout
               for model in (a2c, tmp_path / "a2c")]
    assert printed[0] and printed[0] == printed[1]


# --- the checkpoint metadata sidecar ---------------------------------------------------------------


def test_every_save_writes_a_sidecar_with_the_run_figures(trained_run):
    _, out = trained_run
    for checkpoint in (out / BEST, out / f"checkpoint_{NAME}.pth.tar"):
        meta = read_meta(str(checkpoint))
        ckpt = read_checkpoint(str(checkpoint))
        assert checkpoint_meta_file(str(checkpoint)) == str(checkpoint)[:-len(".pth.tar")] + ".meta.json"
        assert meta["version"] == 1 and meta["stage"] == "train" and meta["run"] == meta["data"] == NAME
        assert (meta["epoch"], meta["step"], meta["best_epoch"]) == (1, ckpt.state.step, 1)
        assert meta["best_bleu4"] == ckpt.state.best_bleu4 == ckpt.state.epochs[0].val_bleu4
        assert meta["best_cider_d"] == ckpt.state.epochs[0].val_cider_d
        assert meta["best_score"] == ckpt.state.best_score and meta["monitor"] == "bleu4"
        assert meta["model_config"]["encoder"] == "resnet18" and meta["model_config"]["decoder_dim"] == 32
        assert meta["checkpoint_bytes"] == os.path.getsize(checkpoint) and meta["saved"] == ckpt.saved_at
    # the feed's best line agrees
    feed = [json.loads(line) for line in open(out / f"metrics_{NAME}.jsonl")]
    val = [line for line in feed if line.get("event") == "epoch" and line.get("split") == "val"][-1]
    assert val["bleu4"] == read_meta(str(out / BEST))["best_bleu4"]


@pytest.mark.parametrize("damage", ["torn", "absent", "not json", "wrong type", "newer version", "stale"])
def test_read_meta_is_none_when_the_sidecar_cannot_be_trusted(trained_run, tmp_path, damage):
    _, out = trained_run
    checkpoint, meta = tmp_path / BEST, tmp_path / f"BEST_{NAME}.meta.json"
    shutil.copy2(out / BEST, checkpoint)
    shutil.copy2(out / f"BEST_{NAME}.meta.json", meta)
    assert read_meta(str(checkpoint))["epoch"] == 1
    text = meta.read_text()
    raw = json.loads(text)
    if damage == "torn":
        meta.write_text(text[:len(text) // 2])
    elif damage == "absent":
        meta.unlink()
    elif damage == "not json":
        meta.write_bytes(b"\xff\xfe garbage")
    elif damage == "wrong type":
        meta.write_text(json.dumps({**raw, "epoch": "one"}))
    elif damage == "newer version":
        meta.write_text(json.dumps({**raw, "version": 2}))
    elif damage == "stale":  # the checkpoint was saved again and the sidecar's write never came
        with open(checkpoint, "ab") as f:
            f.write(b"\0")
        os.utime(meta, (0, 0))
    assert read_meta(str(checkpoint)) is None


def test_a_stale_staging_folder_is_removed(tmp_path):
    from capcli.safeio import atomic_folder, remove_stale_temps, temp_path

    target = tmp_path / "x.bundle"
    dead = temp_path(str(target), pid=2 ** 22 + 12345)  # no such process
    os.mkdir(dead)
    (tmp_path / "x.bundle.keep").write_text("keep")
    open(os.path.join(dead, "model.safetensors"), "wb").close()
    remove_stale_temps(str(target))
    assert not os.path.exists(dead) and (tmp_path / "x.bundle.keep").exists()
    with pytest.raises(RuntimeError), atomic_folder(str(target)) as staging:
        open(os.path.join(staging, "half"), "w").close()
        raise RuntimeError("killed halfway")
    assert sorted(os.listdir(tmp_path)) == ["x.bundle.keep"]  # neither a half bundle nor its staging folder


def test_a_given_output_folder_is_where_the_bundle_goes(exported, tmp_path):
    """`export -m CHECKPOINT --output-folder X` writes X/{name}.bundle, as every command writes into
    its --output-folder; without --output-folder the bundle stays next to its checkpoint."""
    runs, ship = tmp_path / "runs", tmp_path / "ship"
    runs.mkdir()
    shutil.copy(exported[1] / BEST, runs / BEST)
    done = _capcli("export", "-m", runs / BEST, "--output-folder", ship)
    assert done.returncode == 0, done.stderr
    assert sorted(os.listdir(ship / BUNDLE)) == sorted(BUNDLE_FILES.values()) and os.listdir(runs) == [BEST]
    done = _capcli("export", "-m", runs / BEST)
    assert done.returncode == 0, done.stderr
    assert sorted(os.listdir(runs)) == sorted([BEST, BUNDLE])
