"""A2C: the loss pieces on hand-made tensors, encoder freezing, resume, and the feed lines."""

from __future__ import annotations

import os
import shutil

import pytest
import torch

from capcli.data.vocab import Detokenizer
from capcli.runs.feed import read_feed
from capcli.runs.summary import summarize
from capcli.store.checkpoint import load_checkpoint
from capcli.training.a2c import (
    a2c_losses,
    clip_rewards,
    discounted_returns,
    entropy_weight_at,
    step_mask,
)

NAME = "shapes_5_1"


def test_discounted_returns_and_mask():
    # caption 0 ends at its 3rd word (length 3), caption 1 at its 1st; the reward comes at the end
    returns = discounted_returns(torch.tensor([1.0, 2.0]), torch.tensor([3, 1]), steps=4, gamma=0.5)
    assert returns.tolist() == [[0.25, 0.5, 1.0, 0.0], [2.0, 0.0, 0.0, 0.0]]
    assert discounted_returns(torch.tensor([1.0]), torch.tensor([2]), 3, 1.0).tolist() == [[1.0, 1.0, 0.0]]
    assert step_mask(torch.tensor([3, 1]), 4).tolist() == [[1, 1, 1, 0], [1, 0, 0, 0]]


def test_reward_clipping():
    assert clip_rewards(torch.tensor([-3.0, 0.5, 4.0]), 1.0).tolist() == [-1.0, 0.5, 1.0]
    assert clip_rewards(torch.tensor([-3.0, 4.0]), 0.0).tolist() == [-3.0, 4.0]  # 0: off


def test_padding_is_masked_out_of_every_loss():
    mask = step_mask(torch.tensor([2, 1]), 3)  # real positions: (0,0), (0,1), (1,0)
    logp = torch.tensor([[-1.0, -2.0, -50.0], [-3.0, -60.0, -70.0]])
    entropy = torch.tensor([[0.5, 1.5, 99.0], [1.0, 99.0, 99.0]])
    values = torch.tensor([[0.2, 0.4, 9.0], [0.0, 9.0, 9.0]])
    returns = torch.tensor([[1.0, 1.0, 0.0], [2.0, 0.0, 0.0]])
    advantages = returns - values
    actor, critic, ent = a2c_losses(logp, entropy, values, returns, advantages, mask)
    # by hand over the 3 real words: actor −mean(A·logp) = −(0.8·−1 + 0.6·−2 + 2·−3)/3 = 8/3
    assert actor.item() == pytest.approx((0.8 + 1.2 + 6.0) / 3)
    assert critic.item() == pytest.approx((0.8 ** 2 + 0.6 ** 2 + 2.0 ** 2) / 3)
    assert ent.item() == pytest.approx((0.5 + 1.5 + 1.0) / 3)
    # anything on padding changes nothing
    noisy = [t.clone() for t in (logp, entropy, values, returns, advantages)]
    for t in noisy:
        t[mask == 0] = 1234.5
    assert [x.item() for x in a2c_losses(*noisy, mask)] == pytest.approx([actor.item(), critic.item(), ent.item()])


def test_entropy_annealing_schedule():
    weights = [entropy_weight_at(e, 5, 0.1, True) for e in range(5)]
    assert weights == pytest.approx([0.1, 0.0775, 0.055, 0.0325, 0.01])  # linear to a tenth
    assert [entropy_weight_at(e, 5, 0.1, False) for e in range(5)] == [0.1] * 5


def test_special_tokens_removed_before_scoring():
    word_map = {"<pad>": 0, "a": 1, "red": 2, "<unk>": 3, "<start>": 4, "<end>": 5}
    words = Detokenizer(word_map)  # what A2C turns sampled ids into before scoring
    assert words([4, 1, 2, 5, 1, 0]) == ["a", "red"]  # up to <end>, no <start>/<pad>
    assert words([1, 0, 2]) == ["a", "red"]
    from capcli.training.a2c import Rewarder

    refs = [[["a", "red", "circle", "on", "a", "mat"]]]
    bleu = Rewarder("bleu4", refs)
    assert bleu(refs, [["a", "red", "circle", "on", "a", "mat"]]) == pytest.approx([1.0])
    cider = Rewarder("cider", refs + [[["blue", "square"]]])
    assert cider(refs, [["a", "red", "circle", "on", "a", "mat"]])[0] > cider(refs, [["blue", "square"]])[0]


@pytest.fixture
def workdir(trained_run, tmp_path):
    data, out = trained_run
    shutil.copytree(out, tmp_path / "out")
    return data, tmp_path / "out"


def _a2c(run, data, out, *extra):
    return run("a2c", "--checkpoint", out / f"BEST_{NAME}.pth.tar", "--data-folder", data, "--output-folder", out,
               "--batch-size", 8, "--precision", "fp32", "--max-len", 8, *extra)


def test_freeze_encoder_keeps_every_encoder_weight(workdir, run):
    data, out = workdir
    before = load_checkpoint(str(out / f"BEST_{NAME}.pth.tar"))
    result = _a2c(run, data, out, "--epochs", 1, "--freeze-encoder")  # a shapes model trains it by default
    assert result.exit_code == 0, result.output
    after = load_checkpoint(str(out / f"A2C_{NAME}.pth.tar"))
    for key, value in before["encoder"].items():
        assert torch.equal(value, after["encoder"][key]), key  # bit-identical, BatchNorm buffers included
    assert any(not torch.equal(v, after["decoder"][k]) for k, v in before["decoder"].items())
    refused = _a2c(run, data, out, "--epochs", 1)  # a second new run would replace the first
    assert refused.exit_code == 1 and "--overwrite" in refused.output
    result = _a2c(run, data, out, "--epochs", 1, "--train-encoder", "--encoder-lr", 1e-3, "--overwrite")
    assert result.exit_code == 0, result.output
    trained = load_checkpoint(str(out / f"A2C_{NAME}.pth.tar"))
    changed = [k for k, v in before["encoder"].items() if not torch.equal(v, trained["encoder"][k])]
    assert any(k.startswith("resnet.5.") for k in changed)  # stage 2 onwards is trained
    weights = [k for k in changed if k.endswith(("weight", "bias"))]  # BatchNorm buffers move in train mode
    assert any(k.startswith("resnet.5.") and "conv" in k for k in weights)  # gradients reach the encoder
    assert not any(k.startswith(("resnet.0.", "resnet.1.", "resnet.4.")) for k in weights)  # stem, stage 1 fixed


def test_resume_continues_with_critic_and_optimizers(workdir, run, monkeypatch):
    data, out = workdir
    assert _a2c(run, data, out, "--epochs", 1, "--reward", "bleu4", "--temperature", 0.7).exit_code == 0
    first = load_checkpoint(str(out / f"A2C_{NAME}.pth.tar"))
    assert first["epoch"] == 1 and first["actor_optimizer"]["state"]
    import capcli.training.a2c

    seen = {}
    original = capcli.training.a2c.A2CTrainer._epoch

    def spy(self, epoch):
        if "critic" not in seen:
            seen["critic"] = {k: v.clone() for k, v in self.critic.state_dict().items()}
            seen["actor_step"] = self.actor_opt.state_dict()["state"][0]["step"].item()
            seen["epoch"] = epoch
        return original(self, epoch)

    monkeypatch.setattr(capcli.training.a2c.A2CTrainer, "_epoch", spy)
    result = run("a2c", "--resume", "--data-folder", data, "--output-folder", out, "--epochs", 2,
                 "--batch-size", 8, "--precision", "fp32", "--max-len", 8)
    assert result.exit_code == 0, result.output
    assert seen["epoch"] == 1  # the next epoch, not the first again
    for key, value in first["critic"].items():
        assert torch.equal(seen["critic"][key], value), key
    assert seen["actor_step"] == first["actor_optimizer"]["state"][0]["step"].item()
    second = load_checkpoint(str(out / f"A2C_{NAME}.pth.tar"))
    assert second["epoch"] == 2 and [e["epoch"] for e in second["epochs"]] == [1, 2]
    # the resumed run kept the options it was started with (and took the new --epochs and --max-len)
    assert second["a2c_config"]["reward"] == "bleu4" and second["a2c_config"]["temperature"] == 0.7
    assert second["a2c_config"]["epochs"] == 2
    # the feed: training lines kept, one a2c train/val pair per epoch, readable by the summary
    lines = read_feed(str(out / f"metrics_{NAME}.jsonl"))
    a2c = [x for x in lines if x["stage"] == "a2c" and x["event"] == "epoch"]
    assert [(x["epoch"], x["split"]) for x in a2c] == [(1, "train"), (1, "val"), (2, "train"), (2, "val")]
    assert all({"reward", "advantage", "entropy", "actor_loss", "critic_loss", "entropy_weight"} <= set(x)
               for x in a2c if x["split"] == "train")
    assert any(x["stage"] == "train" and x["event"] == "epoch" for x in lines)
    summary = summarize(lines)
    assert summary.a2c["epoch"] == 2 and len(summary.series["a2c_reward"]) == 2
    assert summary.total_epochs["a2c"] == 2  # the resumed run's --epochs, from its start line
    metrics = run("metrics", "--output-folder", out)
    assert metrics.exit_code == 0 and "A2C reward" in metrics.stdout and "A2C epoch" in metrics.stdout
    # an A2C checkpoint captions like any other
    caption = run("caption", data / "shapes" / "images" / "shapes_000000.jpg", "-m", out / f"BEST_A2C_{NAME}.pth.tar",
                  "--no-pictures")
    assert caption.exit_code == 0, caption.output


def test_greedy_baseline_and_bad_input(workdir, run):
    data, out = workdir
    result = _a2c(run, data, out, "--epochs", 1, "--baseline", "greedy", "--reward", "bleu4", "--gamma", 0.9,
                  "--reward-clip", 1.0)
    assert result.exit_code == 0, result.output
    assert run("a2c", "--data-folder", data, "--output-folder", out).exit_code == 2  # neither checkpoint nor resume
    result = run("a2c", "--resume", "--data-folder", data, "--output-folder", out / "elsewhere")
    assert result.exit_code == 1 and "no A2C checkpoint" in result.output


def test_nan_loss_stops_and_keeps_checkpoint(workdir, run, monkeypatch):
    data, out = workdir
    assert _a2c(run, data, out, "--epochs", 1).exit_code == 0
    before = open(out / f"A2C_{NAME}.pth.tar", "rb").read()
    import capcli.training.a2c

    real = capcli.training.a2c.a2c_losses
    monkeypatch.setattr(capcli.training.a2c, "a2c_losses",
                        lambda *a, **k: (real(*a, **k)[0] * float("nan"), *real(*a, **k)[1:]))
    result = _a2c(run, data, out, "--epochs", 2, "--resume")
    assert result.exit_code == 1
    assert "became nan" in result.output and len(result.output.strip().splitlines()) == 1
    assert open(out / f"A2C_{NAME}.pth.tar", "rb").read() == before


def test_sigterm_saves_and_names_resume(workdir):
    import os
    import signal
    import time

    from tests.conftest import run_subprocess

    data, out = workdir
    proc = run_subprocess("a2c", "--checkpoint", out / f"BEST_{NAME}.pth.tar", "--data-folder", data,
                          "--output-folder", out, "--batch-size", 8, "--precision", "fp32", "--max-len", 8,
                          "--epochs", 500)
    checkpoint = out / f"A2C_{NAME}.pth.tar"
    deadline = time.monotonic() + 120
    while not checkpoint.exists() and time.monotonic() < deadline:  # the first epoch is done
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM
    assert "Traceback" not in stderr
    hint = stderr.strip().splitlines()[-1].split("continue with: ", 1)[1]
    assert hint.startswith("capcli a2c ") and hint.endswith(" --resume") and "--checkpoint" not in hint
    assert f"--data-folder {data}" in hint and f"--data-name {NAME}" in hint and "--epochs 500" in hint
    saved = load_checkpoint(str(checkpoint))
    assert saved["epoch"] >= 1 and saved["stage"] == "a2c"


def test_resume_from_a_hand_edited_a2c_checkpoint_is_one_sentence(workdir, run, tmp_path):
    data, out = workdir
    copy = tmp_path / "edited_run"
    shutil.copytree(out, copy)
    if not (copy / f"A2C_{NAME}.pth.tar").exists():
        assert _a2c(run, data, copy, "--epochs", 1).exit_code == 0
    path = copy / f"A2C_{NAME}.pth.tar"
    ckpt = load_checkpoint(str(path))
    del ckpt["critic"]
    torch.save(ckpt, path)
    result = run("a2c", "--resume", "--data-folder", data, "--output-folder", copy, "--epochs", 5)
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert lines[-1] == f"Error: {path}: cannot resume A2C from it (missing critic)"
    assert "Traceback" not in result.output


def test_resume_with_epochs_already_done_touches_nothing(workdir, run, tmp_path):
    data, out = workdir
    copy = tmp_path / "done_run"
    shutil.copytree(out, copy)
    assert _a2c(run, data, copy, "--epochs", 1, "--overwrite").exit_code == 0
    before = {f: ((copy / f).read_bytes(), (copy / f).stat().st_ino) for f in os.listdir(copy)
              if not f.endswith(".lock")}
    result = run("a2c", "--resume", "--data-folder", data, "--output-folder", copy, "--epochs", 1)
    assert result.exit_code == 0 and "Nothing was trained" in result.output
    assert {f: ((copy / f).read_bytes(), (copy / f).stat().st_ino) for f in os.listdir(copy)
            if not f.endswith(".lock")} == before


def test_a_shapes_model_takes_its_own_defaults_unless_told(workdir, run):
    from capcli.config import SHAPES_A2C_DEFAULTS
    from capcli.store.checkpoint import load_checkpoint

    data, out = workdir
    result = _a2c(run, data, out, "--run-name", "own")
    assert result.exit_code == 0, result.output
    epochs = SHAPES_A2C_DEFAULTS["epochs"]
    assert f"a2c epoch {epochs}/{epochs}" in result.output and f"a2c epoch {epochs + 1}" not in result.output
    saved = load_checkpoint(str(out / "A2C_own.pth.tar"))["a2c_config"]
    assert {k: saved[k] for k in SHAPES_A2C_DEFAULTS} == SHAPES_A2C_DEFAULTS
    told = _a2c(run, data, out, "--run-name", "told", "--epochs", 1)
    assert told.exit_code == 0, told.output
    assert "a2c epoch 1/1" in told.output
