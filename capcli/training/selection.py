"""Picking a training run's best epoch: each epoch's figures go into the run state, and the
``--monitor`` score (validation BLEU-4 or CIDEr-D of greedy captions) decides whether it is the
best yet, which saves ``BEST_`` and, when it is not, counts towards learning-rate decay and early
stopping."""

from __future__ import annotations

from capcli.config import MONITOR_LABELS
from capcli.store.checkpoint import TrainState
from capcli.store.epochs import record


def record_epoch(state: TrainState, monitor: str, epoch: int, train: tuple[float, float],
                 val: tuple[float, float, float, float]) -> bool:
    """Add epoch ``epoch``'s (0-based) figures to ``state``; returns whether its ``monitor`` score
    is the best yet (the first epoch always is). Does not count epochs without gain."""
    (train_loss, train_top5), (val_loss, val_top5, bleu4, cider) = train, val
    state.epochs.append(record(epoch + 1, bleu4, cider, train_loss=train_loss, train_top5=train_top5,
                               val_loss=val_loss, val_top5=val_top5))
    score = cider if monitor == "cider" else bleu4
    improved = score > state.best_score or state.best_epoch == 0
    if improved:
        state.best_score, state.best_bleu4, state.best_epoch, state.since_improvement = score, bleu4, epoch + 1, 0
    return improved


def no_gain(state: TrainState, monitor: str) -> str:
    """Why early stopping ended the run."""
    return f"no {MONITOR_LABELS[monitor]} gain for {state.since_improvement} epochs"
