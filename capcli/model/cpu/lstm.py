"""The CPU's decoding form of the LSTM cell: the same h and c as ``nn.LSTMCell``.

The words' share of the gates, embedding · W_ih[:, :embed_dim]ᵀ + b_ih + b_hh, is read from a
table with a row per vocabulary entry instead of multiplied out for every beam and word, and
the cell gate's rows are doubled so one sigmoid gives every gate: tanh(x) = 2σ(2x) − 1.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from capcli.runtime.torch_compat import tensor_version


class TableCell:
    """The cell for one decoder; its weights are rearranged again whenever one of them changed
    (an optimiser step or a load bumps a parameter's version), moved, or autocast changed."""

    def __init__(self) -> None:
        self._key = None
        self._weights: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None

    def __call__(self, decoder, words: torch.Tensor, rest: torch.Tensor | None, h: torch.Tensor,
                 c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        table, rest_weight, hidden_weight = self._decoding_weights(decoder)
        gates = table.index_select(0, words)  # (rows, 4 · decoder_dim)
        if rest is not None:
            gates = gates + F.linear(rest, rest_weight)
        gates = torch.sigmoid(gates + F.linear(h, hidden_weight))
        i, f, g, o = gates.chunk(4, dim=1)  # g holds σ(2x): tanh(x) = 2g − 1
        c = torch.addcmul(f * c, i, 2 * g - 1)
        return o * (2 * torch.sigmoid(2 * c) - 1), c

    def _decoding_weights(self, decoder) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The word-gate table (vocab_size, 4 · decoder_dim) in fp32, W_ih's other columns and W_hh
        in the autocast dtype, cell-gate rows doubled."""
        lstm = decoder.lstm
        params = [lstm.weight_ih, lstm.weight_hh, lstm.bias_ih, lstm.bias_hh]
        params += [] if decoder.embedding is None else [decoder.embedding.weight]
        device_type = params[0].device.type
        dtype = torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else params[0].dtype
        key = (dtype,) + tuple((p.data_ptr(), tensor_version(p), p.device, p.dtype) for p in params)
        if self._key != key:
            with torch.no_grad(), torch.autocast(device_type, enabled=False):
                size, embed_dim = decoder.decoder_dim, decoder.embed_dim
                scale = torch.ones(4 * size, 1, device=params[0].device)
                scale[2 * size:3 * size] = 2.0  # the cell gate's rows
                weight_ih = lstm.weight_ih.float() * scale
                words = weight_ih[:, :embed_dim]
                table = words.t() if decoder.embedding is None else decoder.embedding.weight.float() @ words.t()
                table = table + (lstm.bias_ih + lstm.bias_hh).float() * scale.view(-1)
                hidden = (lstm.weight_hh.float() * scale).to(dtype)
            self._key, self._weights = key, (table, weight_ih[:, embed_dim:].to(dtype), hidden)
        return self._weights
