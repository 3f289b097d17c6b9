"""LSTM decoders over one shared step interface.

``AttentionDecoder`` is Show, Attend and Tell: soft attention over the 14 × 14 encoder pixels,
a sigmoid gate on the context, an LSTMCell fed [word embedding; gated context], h and c
initialised from the mean encoder feature. ``PlainDecoder`` is ImgCap's model without
attention: the pooled image feature initialises the LSTM.

Both expose ``init_state(features)``, ``advance(words, state)`` (one word through the
recurrence) and ``step`` (``advance`` and the output layer); training (``forward``) and every
decoding strategy in ``decoding.py`` are written over them. A state is a tuple of tensors whose
first dimension is the batch, so beams can be reordered with one index. The attention itself
lives in ``attention.py``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from capcli.model.attention import Attention

State = tuple[torch.Tensor, ...]


class _Decoder(nn.Module):
    """Embedding, output layer and the teacher-forced training loop shared by both decoders."""

    has_attention = False

    def __init__(self, vocab_size: int, embed_dim: int, decoder_dim: int, dropout: float, one_hot: bool) -> None:
        super().__init__()
        self.vocab_size, self.one_hot, self.decoder_dim = vocab_size, one_hot, decoder_dim
        self.embed_dim = vocab_size if one_hot else embed_dim
        self.embedding = None if one_hot else nn.Embedding(vocab_size, embed_dim)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(decoder_dim, vocab_size)

    def embed(self, words: torch.Tensor) -> torch.Tensor:
        if self.one_hot:  # fixed one-hot word vectors (the seed's --one-hot)
            return F.one_hot(words, self.vocab_size).to(self.fc.weight.dtype)
        return self.embedding(words)

    def cell(self, words: torch.Tensor, rest: torch.Tensor | None, state: tuple[torch.Tensor, torch.Tensor]):
        """The LSTM cell on [word embedding; ``rest``]: returns h, c.

        Without gradients (decoding) the words' share of the gates, embedding · W_ih[:, :embed_dim]ᵀ
        + b_ih + b_hh, is read from a table with a row per vocabulary entry instead of multiplied
        out for every row and word (for 320 beams, 0.67 GFLOP a word, a fifth of the decoder's
        work), and the cell gate's rows are doubled so that one sigmoid gives every gate:
        tanh(x) = 2σ(2x) − 1 (PyTorch's CPU tanh is several times slower than its sigmoid).
        """
        if torch.is_grad_enabled():
            x = self.embed(words) if rest is None else torch.cat([self.embed(words), rest], dim=1)
            return self.lstm(x, state)
        h, c = state
        table, rest_weight, hidden_weight = self._decoding_weights()
        gates = table.index_select(0, words)
        if rest is not None:
            gates = gates + F.linear(rest, rest_weight)
        gates = torch.sigmoid(gates + F.linear(h, hidden_weight))
        i, f, g, o = gates.chunk(4, dim=1)  # g holds σ(2x): tanh(x) = 2g − 1
        c = torch.addcmul(f * c, i, 2 * g - 1)
        return o * (2 * torch.sigmoid(2 * c) - 1), c

    def _decoding_weights(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The word-gate table (vocab_size, 4 · decoder_dim) in fp32 and W_ih's other columns and
        W_hh in the autocast dtype, cell-gate rows doubled; made again only when a weight changed
        (an optimiser step or a load bumps a parameter's version), moved, or autocast changed."""
        params = [self.lstm.weight_ih, self.lstm.weight_hh, self.lstm.bias_ih, self.lstm.bias_hh]
        params += [] if self.embedding is None else [self.embedding.weight]
        device_type = params[0].device.type
        dtype = torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else params[0].dtype
        key = (dtype,) + tuple((p.data_ptr(), p._version, p.device, p.dtype) for p in params)
        cached = getattr(self, "_decoding_cache", None)
        if cached is None or cached[0] != key:
            with torch.no_grad(), torch.autocast(device_type, enabled=False):
                scale = torch.ones(4 * self.decoder_dim, 1, device=params[0].device)
                scale[2 * self.decoder_dim:3 * self.decoder_dim] = 2.0  # the cell gate's rows
                weight_ih = self.lstm.weight_ih.float() * scale
                words = weight_ih[:, :self.embed_dim]
                table = words.t() if self.embedding is None else self.embedding.weight.float() @ words.t()
                table = table + (self.lstm.bias_ih + self.lstm.bias_hh).float() * scale.view(-1)
                hidden = (self.lstm.weight_hh.float() * scale).to(dtype)
            self._decoding_cache = cached = (key, (table, weight_ih[:, self.embed_dim:].to(dtype), hidden))
        return cached[1]

    def init_state(self, features: torch.Tensor) -> State:
        raise NotImplementedError

    def advance(self, words: torch.Tensor, state: State) -> tuple[torch.Tensor, torch.Tensor | None, State]:
        """One word through the recurrence: returns h (batch, decoder_dim), attention (batch,
        num_pixels) or None, new state."""
        raise NotImplementedError

    def step(self, words: torch.Tensor, state: State) -> tuple[torch.Tensor, torch.Tensor | None, State]:
        """One word: returns logits (batch, vocab), attention (batch, num_pixels) or None, new state."""
        h, alpha, state = self.advance(words, state)
        return self.fc(self.dropout(h)), alpha, state

    def forward(self, features: torch.Tensor, captions: torch.Tensor, lengths: torch.Tensor,
                teacher_forcing: float = 1.0, image_of: torch.Tensor | None = None):
        """Predict every next word of ``captions`` (batch, max_len + 2) given its prefix.

        ``image_of`` maps each caption to its row of ``features`` (None: caption i is image i); an
        image's mean feature and pixel projection are then computed once for all its captions.

        Returns:
            logits (batch, T, vocab) and attention (batch, T, num_pixels) or None, where
            T = max(lengths) - 1 (positions past a caption's own end are padding).
        """
        # Longest captions first: at step t only the captions still running are computed (the
        # batch shrinks as captions end), and the outputs are put back in the caller's order.
        # With pure teacher forcing no word depends on the model's output, so the output layer
        # runs once over every real position after the loop: one matrix product and one weight
        # gradient instead of one per word (a 30-caption step measured bf16 0.24 → 0.20 s).
        once = teacher_forcing >= 1.0
        lengths, order = lengths.sort(descending=True, stable=True)
        captions = captions[order]
        if image_of is None:
            state = self.init_state(features[order])
        else:  # each image's state, one copy per caption
            images = image_of[order]
            state = tuple(None if s is None else s.index_select(0, images) for s in self.init_state(features))
        whole = getattr(self, "per_image_state", ())  # not sliced: attention takes the first rows itself
        running = (lengths - 1).tolist()
        steps = running[0]
        words = captions[:, 0]
        outputs = alphas = None  # outputs: dropped-out h (once) or logits, (batch, T, ·)
        for t in range(steps):
            rows = sum(1 for n in running if n > t)
            state = tuple(s if s is None or i in whole else s[:rows] for i, s in enumerate(state))
            h, alpha, state = self.advance(words[:rows], state)
            out = self.dropout(h)
            if not once:
                out = self.fc(out)
            if outputs is None:
                outputs = out.new_zeros(len(order), steps, out.shape[1])
                alphas = None if alpha is None else alpha.new_zeros(len(order), steps, alpha.shape[1])
            outputs[:rows, t] = out
            if alpha is not None:
                alphas[:rows, t] = alpha
            words = captions[:, t + 1]
            if not once and t + 1 < steps:
                use_model = torch.rand(rows, device=words.device) >= teacher_forcing
                words = torch.cat([torch.where(use_model, out.argmax(dim=1), words[:rows]), words[rows:]])
        if once:
            real = torch.arange(steps, device=lengths.device) < (lengths - 1).unsqueeze(1)  # (batch, T)
            scores = self.fc(outputs[real])  # (real positions, vocab)
            outputs = scores.new_zeros(len(order), steps, scores.shape[1])
            outputs[real] = scores
        restore = order.argsort()
        return outputs[restore], None if alphas is None else alphas[restore]


class AttentionDecoder(_Decoder):
    has_attention = True
    # pixels, their projection and its decoding factors (None: not used) are kept once per image;
    # state[4] maps rows to images (None: row i is image i), so beam search reorders only h, c and that map
    per_image_state = (2, 3, 5)

    def __init__(self, vocab_size: int, encoder_dim: int, embed_dim: int = 512, attention_dim: int = 512,
                 decoder_dim: int = 512, dropout: float = 0.5, one_hot: bool = False) -> None:
        super().__init__(vocab_size, embed_dim, decoder_dim, dropout, one_hot)
        self.attention = Attention(encoder_dim, decoder_dim, attention_dim)
        self.init_h = nn.Linear(encoder_dim, decoder_dim)
        self.init_c = nn.Linear(encoder_dim, decoder_dim)
        self.f_beta = nn.Linear(decoder_dim, encoder_dim)
        self.lstm = nn.LSTMCell(self.embed_dim + encoder_dim, decoder_dim)

    def init_state(self, features: torch.Tensor) -> State:
        pixels = features.flatten(1, 2)  # (batch, num_pixels, encoder_dim)
        device_type = pixels.device.type
        if torch.is_autocast_enabled(device_type):  # cast once here, not in every step's attention
            pixels = pixels.to(torch.get_autocast_dtype(device_type))
        mean = pixels.mean(dim=1)  # (batch, encoder_dim); accumulated in fp32 for bf16 too
        projected = self.attention.encoder_att(pixels)  # (batch, num_pixels, attention_dim)
        if torch.is_grad_enabled() and projected.device.type == "cpu":
            projected = projected.float()  # training's attention works in fp32 (_SigmoidScores)
        factors = self.attention.decoding_factors(projected)
        return self.init_h(mean), self.init_c(mean), pixels, projected, None, factors

    def advance(self, words, state):
        h, c, pixels, projected, image_of, factors = state
        context, alpha = self.attention(pixels, projected, h, image_of, factors)
        gate = torch.sigmoid(self.f_beta(h))  # (batch, encoder_dim)
        h, c = self.cell(words, gate * context, (h, c))
        return h, alpha, (h, c, pixels, projected, image_of, factors)


class PlainDecoder(_Decoder):
    def __init__(self, vocab_size: int, encoder_dim: int, embed_dim: int = 512, decoder_dim: int = 512,
                 dropout: float = 0.5, one_hot: bool = False, **_: object) -> None:
        super().__init__(vocab_size, embed_dim, decoder_dim, dropout, one_hot)
        self.init_h = nn.Linear(encoder_dim, decoder_dim)
        self.init_c = nn.Linear(encoder_dim, decoder_dim)
        self.lstm = nn.LSTMCell(self.embed_dim, decoder_dim)

    def init_state(self, features: torch.Tensor) -> State:
        pooled = features.flatten(1, 2).mean(dim=1)  # (batch, encoder_dim)
        return torch.tanh(self.init_h(pooled)), torch.tanh(self.init_c(pooled))

    def advance(self, words, state):
        h, c = self.cell(words, None, state)
        return h, None, (h, c)
