"""Training loss and accuracy on real (unpadded) positions."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def caption_loss(logits: torch.Tensor, alphas: torch.Tensor | None, captions: torch.Tensor,
                 lengths: torch.Tensor, alpha_c: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy on real positions plus α_c · mean((1 − Σ_t α_t)²); and top-5 accuracy in %.

    Args:
        logits: (batch, T, vocab) predictions of words 1..T of each caption.
        alphas: (batch, T, num_pixels) attention, or None for the plain decoder.
        captions: (batch, max_len + 2) encoded rows; lengths: true length + 2.
    """
    steps = logits.shape[1]
    targets = captions[:, 1:steps + 1]  # (batch, T)
    mask = torch.arange(steps, device=logits.device)[None, :] < (lengths - 1)[:, None]  # (batch, T)
    real_logits = logits[mask].float()  # (positions, vocab)
    real_targets = targets[mask]
    loss = F.cross_entropy(real_logits, real_targets)
    if alphas is not None:
        attention_sum = (alphas.float() * mask[..., None]).sum(dim=1)  # (batch, num_pixels)
        loss = loss + alpha_c * ((1.0 - attention_sum) ** 2).mean()
    top5 = (real_logits.topk(5, dim=1).indices == real_targets[:, None]).any(dim=1).float().mean() * 100
    return loss, top5.detach()
