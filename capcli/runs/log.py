"""What a training run says in its log: one line per epoch and the command that resumes it.

Users follow long runs through ``nohup`` logs and tmux scroll-back, so after each epoch
``train`` and ``a2c`` print one plain line with every figure that matters, and an interrupted
run ends with the exact command to paste to continue it.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def _figure(value: float | None, spec: str) -> str:
    return "–" if value is None else format(value, spec)


def train_epoch_line(epoch: int, epochs: int, train: tuple[float, float], val: tuple[float, float, float, float],
                     lr: float, seconds: float, best: bool, content: float | None = None) -> str:
    """``epoch 3/9  train loss 2.314 top-5 71.2 | val loss 2.501 top-5 68.0 BLEU-4 0.4123 CIDEr-D 1.2345 |
    lr 1.0e-03 | 1:02 | saved BEST`` (``saved`` alone when the epoch did not improve the --monitor score);
    on the shapes set ``content 0.812`` (:mod:`capcli.evaluation.content`) after CIDEr-D."""
    (train_loss, train_top5), (val_loss, val_top5, bleu4, cider) = train, val
    seen = f" content {content:.3f}" if content is not None else ""
    return (f"epoch {epoch}/{epochs}  train loss {train_loss:.3f} top-5 {train_top5:.1f} | "
            f"val loss {val_loss:.3f} top-5 {val_top5:.1f} BLEU-4 {bleu4:.4f} CIDEr-D {cider:.4f}{seen} | "
            f"lr {lr:.1e} | {_duration(seconds)} | saved{' BEST' if best else ''}")


def a2c_epoch_line(epoch: int, epochs: int, means: dict, val: dict, score_name: str, lr: float, seconds: float,
                   best: bool) -> str:
    """``a2c epoch 2/10  reward 0.812 advantage 0.010 entropy 1.23 | val CIDEr-D 2.0801 BLEU-4 0.5120 |
    lr 2.0e-05 | 0:12 | saved BEST``: the validation score the run selects on comes first."""
    other = "BLEU-4" if score_name == "CIDEr-D" else "CIDEr-D"
    return (f"a2c epoch {epoch}/{epochs}  reward {_figure(means.get('reward'), '.3f')} "
            f"advantage {_figure(means.get('advantage'), '.3f')} entropy {_figure(means.get('entropy'), '.2f')} | "
            f"val {score_name} {val[score_name]:.4f} {other} {val[other]:.4f} | lr {lr:.1e} | "
            f"{_duration(seconds)} | saved{' BEST' if best else ''}")


def nothing_to_train(done: int, epochs: int) -> str:
    """Why a call trained nothing: ``--epochs`` is a total the run has reached."""
    if epochs == 0:
        return "nothing to train: --epochs 0"
    return (f"nothing to train: the run has done {done} epoch(s) and --epochs {epochs} is the total; "
            f"give --epochs above {done} to train more")


def running_figures(loss_sum: float, top5_sum: float | None, steps: int) -> str:
    """The progress bar's status text: the epoch's running mean loss (and top-5)."""
    n = max(steps, 1)
    return f"loss {loss_sum / n:.3f}" + ("" if top5_sum is None else f" top-5 {top5_sum / n:.1f}")


def resume_command(command: str, given: Sequence[str], needed: Sequence[tuple[str, str]] = ()) -> str:
    """The command line that continues an interrupted run.

    Args:
        command: ``train`` or ``a2c``.
        given: the options as the user gave them, already without ``--overwrite`` and
            ``--checkpoint`` (a resumed run continues from its own checkpoint).
        needed: (option, value) pairs the run resolved by itself that resuming must be told,
            added where ``given`` lacks the option.
    """
    words = ["capcli", command, *given]
    for option, value in needed:
        if option not in given:
            words += [option, value]
    if "--resume" not in given:
        words.append("--resume")
    return shlex.join(words)
