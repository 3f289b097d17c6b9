"""`capcli demo` end to end on a small set, and `capcli bench` measurements (a subset, --quick)."""

from __future__ import annotations

import json
import os

import pytest
import torch

from capcli.config import SHAPES_TRAIN_DEFAULTS
from capcli.demo import plan as demo_plan
from capcli.runtime.device import resolve_precision

FP32 = resolve_precision("fp32", torch.device("cpu"))


@pytest.mark.parametrize("per_image, side", [(0.002, 128), (0.02, 80)])
def test_the_demo_trains_smaller_scenes_where_the_full_ones_would_not_fit_its_minutes(monkeypatch, per_image, side):
    """0.002 s an image (half that for the encoder alone): 2 × 8,000 images × (3 × 0.001 + 5 × 0.002) s
    = 208 s with the overhead of a real epoch, within the budget; 0.02 s: 35 min."""
    monkeypatch.setattr(demo_plan, "seconds_per_training_image", lambda *args: (per_image / 2, per_image))
    plan = demo_plan.plan_demo(torch.device("cpu"), FP32, 10_000)
    assert (plan.image_size, plan.concept_epochs, plan.epochs) == (side, 3, 5)
    assert plan.reason.startswith(f"Demo: {side}-pixel scenes: a training step took {per_image * 32:.2f} s for 32 "
                                  "images here (fp32 on cpu), so 128-pixel training would take ~")
    assert ("within its" in plan.reason) == (side == 128)
    assert demo_plan.plan_demo(torch.device("cpu"), FP32, 10_000, epochs=2).epochs == 2  # given wins


def test_the_demo_keeps_a_given_or_prepared_size_without_timing_anything(monkeypatch):
    monkeypatch.setattr(demo_plan, "seconds_per_training_image", lambda *args: pytest.fail("timed"))
    given = demo_plan.plan_demo(torch.device("cpu"), FP32, 10_000, image_size=128, prepared_size=80)
    assert (given.image_size, given.reason) == (128, "Demo: 128-pixel scenes (as asked).")
    prepared = demo_plan.plan_demo(torch.device("cpu"), FP32, 10_000, prepared_size=80)
    assert (prepared.image_size, prepared.epochs) == (80, demo_plan.SMALL[2])


def test_the_timing_step_runs_the_demos_model_and_keeps_the_callers_random_numbers():
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    encoder_only, whole = demo_plan.seconds_per_training_image(torch.device("cpu"), FP32, 32)
    assert 0 < encoder_only and 0 < whole
    assert torch.equal(torch.rand(3), expected)


def test_demo_runs_every_stage_and_can_run_again(tmp_path, run, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = ("demo", "--num-images", 40, "--epochs", 1, "--workers", 1)
    result = run(*args)
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "Trained shapes_5_5" in out and "Test split, 4 images" in out
    chosen = next(line for line in result.output.splitlines() if line.startswith("Demo: "))
    assert "-pixel scenes: a training step took" in chosen and "-pixel training would take" in chosen, chosen
    assert out.count("generated:") == 3 and out.count("reference:") == 15
    for line in out.splitlines():
        if line.strip().startswith("pictures:"):
            assert all(os.path.exists(p.strip()) for p in line.split(":", 1)[1].split(","))
    assert "capcli caption" in out and "Next, try:" in out
    assert (tmp_path / "model_outputs" / "evaluation_BEST_shapes_5_5_test.json").exists()
    first = json.load(open(tmp_path / "model_outputs" / "evaluation_BEST_shapes_5_5_test.json"))
    from capcli.store.checkpoint import load_checkpoint

    ckpt = load_checkpoint(str(tmp_path / "model_outputs" / "BEST_shapes_5_5.pth.tar"))
    model = ckpt["model_config"]
    for key in ("encoder", "encoded_size", "decoder_dim"):  # the shapes defaults
        assert model[key] == SHAPES_TRAIN_DEFAULTS[key], key
    assert ckpt["train_config"]["fine_tune_encoder"] and ckpt["train_config"]["epochs"] == 1  # --epochs wins
    # a second run reuses the prepared data and the trained model
    again = run(*args)
    assert again.exit_code == 0, again.output
    assert "up to date" in again.stdout
    side = ckpt["image_size"]
    assert f"Demo: {side}-pixel scenes (the scenes already prepared)." in again.output
    assert json.load(open(tmp_path / "model_outputs" / "evaluation_BEST_shapes_5_5_test.json")) == first


def test_bench_prep_and_caption_subset(tmp_path, run):
    report_path = tmp_path / "bench.json"
    result = run("bench", "--quick", "--only", "prep", "--only", "caption", "--json-file", report_path,
                 "--device", "cpu")
    assert result.exit_code == 0, result.output
    report = json.load(open(report_path))
    assert {"cpu", "cores", "torch", "device"} <= set(report["machine"])
    names = [r["name"] for r in report["results"]]
    assert names[0] == "caption beam5 batched " + ("bf16" if report["machine"]["cpu_bf16"] else "fp32")
    assert any(n.startswith("prep 1 worker") for n in names) and len(names) == 4
    for row in report["results"]:
        assert row["value"] > 0 and row["peak_rss_mb"] > 50 and len(row["times"]) >= 2
    assert report["beam_same_captions"] is True  # in fp32: no near-tie rounded apart as bf16 can (bench.py)
    assert report["beam_comparison"] == {"images": 32, "differing": 0, "largest_score_gap": None, "precision": "fp32"}
    ratios = report["ratios"]
    assert set(ratios) >= {"encoder_bf16_vs_fp32", "train_cached_vs_raw", "beam_batched_vs_single",
                           "prep_workers_vs_one"}
    assert ratios["encoder_bf16_vs_fp32"] is None  # not measured in this subset
    assert ratios["beam_batched_vs_single"] > 0 and ratios["prep_workers_vs_one"] > 0  # figures, not verdicts on speed
    assert "batched and one-at-a-time beam search give the same captions (fp32): yes (32 of 32 images)" in result.stdout


def test_bench_unknown_subset(run):
    result = run("bench", "--quick", "--only", "nothing-like-this")
    assert result.exit_code == 1 and "no measurement matches" in result.output


def test_caption_comparison_counts_differing_images_and_their_score_gap():
    from capcli.runtime.bench import compare_captions

    batched = [([5, 6], -3.0), ([7], -1.25), ([8, 9], -2.0)]
    single = [([5, 6], -3.0), ([4], -1.0), ([9, 8], -2.5)]
    assert compare_captions(batched, single) == {"images": 3, "differing": 2, "largest_score_gap": 0.5}
    assert compare_captions(batched, batched)["differing"] == 0
