"""LSTM decoders over one shared step interface.

``AttentionDecoder`` is Show, Attend and Tell: soft attention over the 14 × 14 encoder pixels,
a sigmoid gate on the context, an LSTMCell fed [word embedding; gated context], h and c
initialised from the mean encoder feature. ``PlainDecoder`` is ImgCap's model without
attention: the pooled image feature initialises the LSTM.

Both expose ``init_state(features)``, ``advance(words, state)`` (one word through the
recurrence) and ``step`` (``advance`` and the output layer); training (``forward``) and every
decoding strategy in ``decoding.py`` are written over them. ``kernels``, None unless
``capcli.model.cpu.enable`` set it, computes the attention, the cell and the initial state in
the CPU's faster forms; it may decline (return None), and then the textbook line below runs.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from capcli.model.attention import Attention


@dataclass(frozen=True)
class DecoderState:
    """The recurrence's state for a batch of rows (captions in training, beams in decoding).

    ``h`` and ``c`` have a row each; ``pixels`` and ``projected`` have one entry per image, which
    its rows share; ``image_of`` maps each row to its image. With ``image_of`` None row i is
    image i, and there may be more images than rows (the captions that ended dropped off the
    end). ``decoding`` marks a state made for step-by-step decoding; ``prepared`` holds what a
    CPU kernel computed once per image for it.
    """

    h: torch.Tensor  # (rows, decoder_dim)
    c: torch.Tensor  # (rows, decoder_dim)
    pixels: torch.Tensor | None = None  # (images, num_pixels, encoder_dim)
    projected: torch.Tensor | None = None  # (images, num_pixels, attention_dim)
    image_of: torch.Tensor | None = None  # (rows,)
    decoding: bool = False
    prepared: torch.Tensor | None = None

    @property
    def rows(self) -> int:
        return self.h.shape[0]

    def select(self, rows: torch.Tensor | slice) -> DecoderState:
        """The state of ``rows``: a slice keeps views, an index tensor picks (and may repeat or
        reorder) rows; the per-image tensors are never copied."""
        if self.image_of is not None:
            image_of = self.image_of[rows]
        elif isinstance(rows, slice) and not rows.start and rows.step in (None, 1):
            image_of = None  # row i is still image i
        else:
            image_of = torch.arange(self.rows, device=self.h.device)[rows]
        return replace(self, h=self.h[rows], c=self.c[rows], image_of=image_of)

    def unshared(self) -> DecoderState:
        """Every per-image tensor copied out to one entry per row (``image_of`` None): a training
        batch then takes views of its running rows at every word instead of gathering copies."""
        if self.image_of is None:
            return self
        return replace(self, pixels=self.per_row(self.pixels), projected=self.per_row(self.projected), image_of=None)

    def per_row(self, per_image: torch.Tensor | None) -> torch.Tensor | None:
        """A per-image tensor's entry for every row: (rows, …)."""
        if per_image is None:
            return None
        if self.image_of is None:
            return per_image[:self.rows]
        return per_image.index_select(0, self.image_of)


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
        self.kernels = None  # capcli.model.cpu's forms, once enabled

    def embed(self, words: torch.Tensor) -> torch.Tensor:
        if self.one_hot:  # fixed one-hot word vectors (the seed's --one-hot)
            return F.one_hot(words, self.vocab_size).to(self.fc.weight.dtype)
        return self.embedding(words)

    def cell(self, words: torch.Tensor, rest: torch.Tensor | None, state: DecoderState):
        """The LSTM cell on [word embedding; ``rest``]: returns h, c (rows, decoder_dim)."""
        if self.kernels is not None and (fast := self.kernels.cell(self, words, rest, state)) is not None:
            return fast
        x = self.embed(words) if rest is None else torch.cat([self.embed(words), rest], dim=1)
        return self.lstm(x, (state.h, state.c))

    def init_state(self, features: torch.Tensor, decoding: bool = False) -> DecoderState:
        """The state before the first word, one row per image of ``features`` (batch, 14, 14, C)."""
        raise NotImplementedError

    def advance(self, words: torch.Tensor, state: DecoderState):
        """One word through the recurrence: returns h (rows, decoder_dim), attention (rows,
        num_pixels) or None, new state."""
        raise NotImplementedError

    def step(self, words: torch.Tensor, state: DecoderState):
        """One word: returns logits (rows, vocab), attention (rows, num_pixels) or None, new state."""
        h, alpha, state = self.advance(words, state)
        return self.fc(self.dropout(h)), alpha, state

    def forward(self, features: torch.Tensor, captions: torch.Tensor, lengths: torch.Tensor,
                teacher_forcing: float = 1.0, image_of: torch.Tensor | None = None):
        """Predict every next word of ``captions`` (batch, max_len + 2) given its prefix.

        ``image_of`` maps each caption to its row of ``features`` (None: caption i is image i), so
        an image's state is computed once for all its captions.

        Returns:
            logits (batch, T, vocab) and attention (batch, T, num_pixels) or None, where
            T = max(lengths) - 1 (positions past a caption's own end are zero).
        """
        lengths, order = lengths.sort(descending=True, stable=True)  # longest first: the batch shrinks
        captions = captions[order]
        if image_of is None:
            state = self.init_state(features[order])
        else:
            state = self.init_state(features).select(image_of[order]).unshared()  # a row per caption
        # with pure teacher forcing no input depends on a prediction: the output layer runs once, after the loop
        once = teacher_forcing >= 1.0
        running = (lengths - 1).tolist()  # words to predict per caption
        steps = running[0]
        outputs = alphas = None
        words = captions[:, 0]
        for t in range(steps):
            rows = sum(1 for n in running if n > t)  # captions still running at word t
            h, alpha, state = self.advance(words[:rows], state.select(slice(0, rows)))
            out = self.dropout(h) if once else self.fc(self.dropout(h))  # (rows, decoder_dim or vocab)
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

    def __init__(self, vocab_size: int, encoder_dim: int, embed_dim: int = 512, attention_dim: int = 512,
                 decoder_dim: int = 512, dropout: float = 0.5, one_hot: bool = False) -> None:
        super().__init__(vocab_size, embed_dim, decoder_dim, dropout, one_hot)
        self.attention = Attention(encoder_dim, decoder_dim, attention_dim)
        self.init_h = nn.Linear(encoder_dim, decoder_dim)
        self.init_c = nn.Linear(encoder_dim, decoder_dim)
        self.f_beta = nn.Linear(decoder_dim, encoder_dim)
        self.lstm = nn.LSTMCell(self.embed_dim + encoder_dim, decoder_dim)

    def init_state(self, features: torch.Tensor, decoding: bool = False) -> DecoderState:
        pixels = features.flatten(1, 2)  # (batch, num_pixels, encoder_dim)
        mean = pixels.mean(dim=1)  # (batch, encoder_dim)
        device_type = pixels.device.type
        if torch.is_autocast_enabled(device_type):  # cast once here, not at every word's weighted sum
            pixels = pixels.to(torch.get_autocast_dtype(device_type))
        state = DecoderState(self.init_h(mean), self.init_c(mean), pixels, self.attention.encoder_att(pixels),
                             decoding=decoding)
        return state if self.kernels is None else self.kernels.prepare(self, state)

    def attend(self, state: DecoderState):
        """Each row's context (rows, encoder_dim) and attention (rows, num_pixels) over its image."""
        if self.kernels is not None and (fast := self.kernels.attend(self.attention, state)) is not None:
            return fast
        return self.attention(state.per_row(state.pixels), state.per_row(state.projected), state.h)

    def advance(self, words: torch.Tensor, state: DecoderState):
        context, alpha = self.attend(state)
        gate = torch.sigmoid(self.f_beta(state.h))  # (rows, encoder_dim)
        h, c = self.cell(words, gate * context, state)
        return h, alpha, replace(state, h=h, c=c)


class PlainDecoder(_Decoder):
    def __init__(self, vocab_size: int, encoder_dim: int, embed_dim: int = 512, decoder_dim: int = 512,
                 dropout: float = 0.5, one_hot: bool = False, **_: object) -> None:
        super().__init__(vocab_size, embed_dim, decoder_dim, dropout, one_hot)
        self.init_h = nn.Linear(encoder_dim, decoder_dim)
        self.init_c = nn.Linear(encoder_dim, decoder_dim)
        self.lstm = nn.LSTMCell(self.embed_dim, decoder_dim)

    def init_state(self, features: torch.Tensor, decoding: bool = False) -> DecoderState:
        pooled = features.flatten(1, 2).mean(dim=1)  # (batch, encoder_dim)
        return DecoderState(torch.tanh(self.init_h(pooled)), torch.tanh(self.init_c(pooled)), decoding=decoding)

    def advance(self, words: torch.Tensor, state: DecoderState):
        h, c = self.cell(words, None, state)
        return h, None, replace(state, h=h, c=c)
