"""Additive (Show, Attend and Tell) attention, as the paper writes it.

This is the form CUDA and ``torch.compile`` run; the CPU computes the same function in other
forms (``capcli.model.cpu``), switched on explicitly and tested equal to this one.
"""

from __future__ import annotations

import torch
from torch import nn


class Attention(nn.Module):
    """A score per pixel, w · tanh(W_e · pixel + W_d · h) + b; softmax over the pixels; the context
    is the pixels' average under those weights."""

    def __init__(self, encoder_dim: int, decoder_dim: int, attention_dim: int) -> None:
        super().__init__()
        self.encoder_att = nn.Linear(encoder_dim, attention_dim)  # W_e: the pixels' share, once per image
        self.decoder_att = nn.Linear(decoder_dim, attention_dim)  # W_d: the hidden state's share, every word
        self.full_att = nn.Linear(attention_dim, 1)  # w, b

    def forward(self, pixels: torch.Tensor, projected: torch.Tensor, h: torch.Tensor):
        """Context (rows, encoder_dim) and weights (rows, num_pixels) for each row of ``h``.

        Args:
            pixels: (rows, num_pixels, encoder_dim) encoder features.
            projected: (rows, num_pixels, attention_dim), ``encoder_att(pixels)``.
            h: (rows, decoder_dim) decoder hidden state.
        """
        hidden = self.decoder_att(h).unsqueeze(1)  # (rows, 1, attention_dim)
        scores = self.full_att(torch.tanh(projected + hidden)).squeeze(2)  # (rows, num_pixels)
        alpha = torch.softmax(scores, dim=1)  # (rows, num_pixels)
        context = torch.bmm(alpha.unsqueeze(1).to(pixels.dtype), pixels).squeeze(1)  # (rows, encoder_dim)
        return context, alpha
