"""What the training steps of ``train`` and ``a2c`` share: the seed of an epoch, and one optimiser
step that refuses a non-finite loss before anything changes."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from capcli.errors import CapcliError


class NonFiniteLoss(CapcliError):
    """The loss became NaN or infinite; nothing was saved."""


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of epoch ``epoch`` (0-based) of a run seeded ``seed``: its batch order and its
    dropout, so that a resumed epoch redoes them exactly."""
    return seed * 100_003 + epoch


def optimizer_step(loss: torch.Tensor, optimizers: Sequence[torch.optim.Optimizer], scaler: torch.amp.GradScaler,
                   clip: Callable[[], object], refusal: Callable[[float], str]) -> None:
    """scale → backward → unscale → ``clip`` → step → update → zero_grad.

    Raises:
        NonFiniteLoss: ``loss`` is NaN or infinite (``refusal`` says so, given its value); nothing
            was changed.
    """
    if not torch.isfinite(loss):
        raise NonFiniteLoss(refusal(loss.item()))
    scaler.scale(loss).backward()
    for optimizer in optimizers:
        scaler.unscale_(optimizer)
    clip()
    for optimizer in optimizers:
        scaler.step(optimizer)
    scaler.update()
    for optimizer in optimizers:
        optimizer.zero_grad(set_to_none=True)
