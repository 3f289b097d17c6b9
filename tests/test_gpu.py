"""The GPU check (`make gpu-check`): what only a CUDA device can show. Skipped without one.

Each test records its peak GPU memory; `make gpu-check` writes them, with the bench figures, to
gpu-check/ as JSON.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

from capcli.store.checkpoint import load_checkpoint
from tests.test_train import TINY

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]
GPU_TINY = tuple("cuda" if a == "cpu" else a for a in TINY if a not in ("--precision", "fp32"))


@pytest.fixture(autouse=True)
def peak_memory(request):
    """Peak GPU memory of the test, appended to $CAPCLI_GPU_CHECK_OUT/tests.jsonl when set."""
    torch.cuda.reset_peak_memory_stats()
    yield
    out = os.environ.get("CAPCLI_GPU_CHECK_OUT")
    if out:
        os.makedirs(out, exist_ok=True)
        with open(os.path.join(out, "tests.jsonl"), "a") as f:
            f.write(json.dumps({"test": request.node.name, "device": torch.cuda.get_device_name(),
                                "peak_gpu_mb": torch.cuda.max_memory_allocated() / 2 ** 20}) + "\n")


@pytest.mark.parametrize("options", [("--precision", "fp16"), ("--precision", "bf16"), ("--compile",)])
def test_a_training_epoch_on_the_gpu(data, tmp_path, run, options):
    """fp16 autocast with a GradScaler, bf16, and a compiled decoder step: one epoch each."""
    if "bf16" in options and not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bf16")
    out = tmp_path / "out"
    result = run("train", "--data-folder", data, "--output-folder", out, *GPU_TINY, "--device", "cuda",
                 "--epochs", 1, *options)
    assert result.exit_code == 0, result.output
    ckpt = load_checkpoint(str(out / "checkpoint_shapes_5_1.pth.tar"))
    assert ckpt["epoch"] == 1 and all(torch.isfinite(v).all() for v in ckpt["decoder"].values())
    if "fp16" in options:
        assert ckpt["scaler"] and ckpt["scaler"]["scale"] > 0  # the GradScaler ran and was saved


def test_batched_beam_search_on_the_gpu_equals_one_image_at_a_time():
    from capcli.model.decoder import AttentionDecoder
    from capcli.model.decoding import beam_search

    torch.manual_seed(0)
    decoder = AttentionDecoder(vocab_size=40, encoder_dim=64, embed_dim=32, attention_dim=32, decoder_dim=48,
                               dropout=0.0).cuda().eval()
    features = torch.randn(12, 14, 14, 64, device="cuda")
    for k in (1, 3, 5):
        batched = beam_search(decoder, features, 1, 2, 12, beam_size=k, banned=(0, 1))
        for i, result in enumerate(batched):
            alone = beam_search(decoder, features[i:i + 1], 1, 2, 12, beam_size=k, banned=(0, 1))[0]
            assert result.tokens == alone.tokens
            assert result.score == pytest.approx(alone.score, abs=1e-4)


def test_caption_and_evaluate_on_the_gpu(trained_run, tmp_path, run):
    data, trained = trained_run
    out = tmp_path / "out"
    shutil.copytree(trained, out)
    best = out / "BEST_shapes_5_1.pth.tar"
    image = next(p for p in sorted((data / "shapes" / "images").iterdir()) if p.suffix == ".jpg")
    cpu = run("caption", str(image), "-m", best, "--device", "cpu", "--precision", "fp32", "--output-folder", out)
    gpu = run("caption", str(image), "-m", best, "--device", "cuda", "--precision", "fp32", "--output-folder", out)
    assert gpu.exit_code == 0 and cpu.exit_code == 0, gpu.output
    assert gpu.output.strip().splitlines()[0] == cpu.output.strip().splitlines()[0]
    result = run("evaluate", "-m", best, "--data-folder", data, "--beams", "1,3", "--device", "cuda",
                 "--output-folder", out)
    assert result.exit_code == 0, result.output
    assert "BLEU-4" in result.output


def test_torchrun_one_process_with_nccl(data, tmp_path):
    out = tmp_path / "out"
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    done = subprocess.run([torchrun, "--standalone", "--nproc_per_node=1", "-m", "capcli.cli", "train",
                           "--data-folder", str(data), "--output-folder", str(out), *map(str, GPU_TINY),
                           "--device", "cuda", "--epochs", "1"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert load_checkpoint(str(out / "checkpoint_shapes_5_1.pth.tar"))["epoch"] == 1
