"""Decoding strategies written over one decoder step, batched over images."""

from __future__ import annotations

import torch


@torch.no_grad()
def greedy(decoder, features: torch.Tensor, start: int, end: int, max_len: int):
    """Greedy decoding of a batch: returns token lists (without ``<start>``/``<end>``) and attention.

    Returns:
        ``(captions, alphas)``: one list of ids per image; per image a (len, num_pixels) tensor
        of attention (or None for the plain decoder).
    """
    batch = features.shape[0]
    state = decoder.init_state(features)
    words = torch.full((batch,), start, dtype=torch.long, device=features.device)
    finished = torch.zeros(batch, dtype=torch.bool, device=features.device)
    tokens, alphas = [], []
    for _ in range(max_len):
        logits, alpha, state = decoder.step(words, state)
        words = logits.argmax(dim=1)
        tokens.append(words)
        if alpha is not None:
            alphas.append(alpha.float())
        finished |= words == end
        if bool(finished.all()):
            break
    tokens_t = torch.stack(tokens, dim=1).tolist()  # (batch, steps)
    alpha_t = torch.stack(alphas, dim=1) if alphas else None  # (batch, steps, num_pixels)
    captions, attention = [], []
    for i, row in enumerate(tokens_t):
        n = row.index(end) if end in row else len(row)
        captions.append(row[:n])
        attention.append(alpha_t[i, :n].cpu() if alpha_t is not None else None)
    return captions, attention
