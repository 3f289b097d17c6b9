"""Additive (Show, Attend and Tell) attention and the CPU forms it is computed in.

``Attention`` scores each encoder pixel against the decoder's hidden state. Decoding without
gradients on the CPU takes whole images' rows a chunk at a time in a product form;
``_SigmoidScores`` is training's CPU form with a backward pass of its own.
"""

from __future__ import annotations

import torch
from torch import nn


class Attention(nn.Module):
    """Additive attention: a score per pixel, w · tanh(projected pixel + projected hidden state) + b.

    ``pixels`` and ``projected`` hold one entry per image; ``image_of`` maps each row of ``h`` to
    its image (None: row i is image i), so the beams of an image share one copy.

    Without gradients on the CPU (every decoding strategy) rows are taken a few at a time, so the
    (rows, pixels, attention_dim) intermediate stays in cache instead of streaming through memory,
    and the same function is computed as (2w) · σ(2z) + (b − Σw), since tanh(z) = 2σ(2z) − 1 and
    PyTorch's CPU sigmoid runs about 10× faster than its tanh (9.9 vs 0.98 G elements/s in fp32
    on this project's AVX-512 machine). With z = p + q (projected pixel, projected hidden state),
    2w · σ(2z) = 1 / (1/(2w) + e^(−2p) · e^(−2q)/(2w)): given ``factors`` = e^(−2p), computed once
    per image by ``decoding_factors``, a step costs one fused multiply-add, a reciprocal and a sum
    per element, in fp32 whatever the precision (PyTorch's CPU kernels for them are faster in fp32
    than in bf16). Attention over 320 rows (64 images × 5 beams) measured 5.5 ms per step against
    11.2 ms in the bf16 sigmoid form, which steps whose values are out of the product form's range
    fall back to. Training on the CPU uses the sigmoid form too, in fp32 with a backward pass of
    its own (``_SigmoidScores``); on CUDA, and when compiled, the textbook form.
    """

    # 32 × 196 × 512 fp32 = 12.8 MB; the product form measured 6.2 / 5.6 / 5.5 / 6.6 / 7.4 ms per
    # step of 320 rows with chunks of 16 / 24 / 32 / 48 / 64 rows
    ROWS_PER_CHUNK = 32

    def __init__(self, encoder_dim: int, decoder_dim: int, attention_dim: int) -> None:
        super().__init__()
        self.encoder_att = nn.Linear(encoder_dim, attention_dim)
        self.decoder_att = nn.Linear(decoder_dim, attention_dim)
        self.full_att = nn.Linear(attention_dim, 1)

    # e^(−2p) stays finite and normal in fp32 for |p| ≤ 40; with the per-row terms also finite and
    # normal (checked each step), their product is e^(−2z)/(2w) or its correct limit (inf → σ = 0,
    # 0 → σ = 1), never 0 · inf
    FACTOR_LIMIT = 40.0

    @staticmethod
    def decodes_in_chunks(device: torch.device) -> bool:
        return not torch.is_grad_enabled() and device.type == "cpu"

    def decoding_factors(self, projected: torch.Tensor) -> torch.Tensor | None:
        """e^(−2 · projected) for the chunked path, or None where a value is out of range (there the
        sigmoid form is used)."""
        if not self.decodes_in_chunks(projected.device):
            return None
        low, high = torch.aminmax(projected)
        if max(-low.item(), high.item()) > self.FACTOR_LIMIT:
            return None
        return projected.to(torch.float32, copy=True).mul_(-2.0).exp_()  # a copy: projected stays

    def forward(self, pixels: torch.Tensor, projected: torch.Tensor, h: torch.Tensor,
                image_of: torch.Tensor | None = None, factors: torch.Tensor | None = None):
        # pixels (images, num_pixels, encoder_dim); projected and factors (images, num_pixels,
        # attention_dim); h (rows, decoder_dim); with image_of None, row i is image i (images may
        # outnumber rows: the first ones are used)
        hidden = self.decoder_att(h)  # (rows, attention_dim)
        if self.decodes_in_chunks(projected.device):
            return self._in_chunks(pixels, projected, hidden.unsqueeze(1), image_of, factors)
        if image_of is not None:
            pixels, projected = pixels.index_select(0, image_of), projected.index_select(0, image_of)
        pixels = pixels[:h.shape[0]]
        if projected.device.type == "cpu" and not torch.compiler.is_compiling():  # compiling fuses tanh itself
            scores = _SigmoidScores.apply(projected, hidden, self.full_att.weight, self.full_att.bias)
        else:
            scores = self.full_att(torch.tanh(projected[:h.shape[0]] + hidden.unsqueeze(1))).squeeze(2)
        alpha = torch.softmax(scores, dim=1)  # (rows, num_pixels)
        context = torch.bmm(alpha.unsqueeze(1).to(pixels.dtype), pixels).squeeze(1)  # (rows, encoder_dim)
        return context, alpha

    def _in_chunks(self, pixels: torch.Tensor, projected: torch.Tensor, hidden: torch.Tensor,
                   image_of: torch.Tensor | None, factors: torch.Tensor | None):
        rows, num_pixels, attention_dim = hidden.shape[0], projected.shape[1], projected.shape[2]
        weight = 2 * self.full_att.weight.view(-1).float()  # 2w
        total = self.full_att.weight.sum().item()  # w · tanh(z) + b = Σ 2w · σ(2z) + (b − Σw)
        row_terms = self._product_terms(hidden, weight) if factors is not None else None
        products = row_terms is not None
        if products:  # 2w · σ(2z) = 1 / (1/(2w) + e^(−2p) · e^(−2q)/(2w)), in fp32
            pixel_terms, base, dtype, centre = factors, 1.0 / weight, torch.float32, False
        else:  # the sigmoid form: p per image, 2q per row
            pixel_terms, row_terms, dtype = projected, 2 * hidden.to(projected.dtype), projected.dtype
            column = weight.to(dtype).unsqueeze(1)  # 2w as (attention_dim, 1)
            # in bf16 the products are rounded at the size of Σw, so where that is large, σ is
            # centred first (σ − ½, one more pass) to keep them small
            centre = dtype != torch.float32 and abs(total) > 1.0
        bias = self.full_att.bias.item() - (0.0 if centre else total)
        runs = list(_image_runs(image_of, rows, self.ROWS_PER_CHUNK))
        most = max(len(images) * rows_each for _, images, rows_each in runs)
        z_buffer = torch.empty(most, num_pixels, attention_dim, dtype=dtype)
        score_buffer = torch.empty(most, num_pixels, dtype=dtype)
        alpha = torch.empty(rows, num_pixels)
        context = pixels.new_empty(rows, pixels.shape[2])
        with torch.autocast("cpu", enabled=False):  # dtypes are explicit here, as out= needs
            for first, images, rows_each in runs:
                count = len(images)
                n, last = count * rows_each, first + count * rows_each
                low, high = int(images[0]), int(images[-1]) + 1
                if high - low == count:  # consecutive images (the common case): views, no copies
                    image_terms, image_pixels = pixel_terms[low:high], pixels[low:high]
                else:
                    image_terms, image_pixels = pixel_terms.index_select(0, images), pixels.index_select(0, images)
                z = z_buffer[:n].view(count, rows_each, num_pixels, attention_dim)  # each image's rows side by side
                chunk_rows = row_terms[first:last].view(count, rows_each, 1, attention_dim)
                scores = score_buffer[:n]
                if products:
                    torch.addcmul(base, chunk_rows, image_terms.unsqueeze(1), out=z).reciprocal_()
                    torch.sum(z_buffer[:n], dim=2, out=scores)
                else:  # σ(2z) with 2z = 2q + 2p
                    torch.add(chunk_rows, image_terms.unsqueeze(1), alpha=2, out=z).sigmoid_()
                    if centre:
                        z.sub_(0.5)
                    torch.matmul(z_buffer[:n], column, out=scores.unsqueeze(2))
                torch.softmax(scores.float() + bias, dim=1, out=alpha[first:last])
                torch.bmm(alpha[first:last].view(count, rows_each, num_pixels).to(pixels.dtype),
                          image_pixels, out=context[first:last].view(count, rows_each, -1))
        return context, alpha

    def _product_terms(self, hidden: torch.Tensor, weight: torch.Tensor) -> torch.Tensor | None:
        """e^(−2q)/(2w) per row for the product form, or None where one is infinite or subnormal
        (a large |q|, a zero or huge weight), where the form would lose a term: then the step uses
        the sigmoid form."""
        terms = torch.exp(hidden.float() * -2.0) / weight
        low, high = torch.aminmax(terms.abs())
        return terms if low.item() >= torch.finfo(torch.float32).tiny and high.item() < float("inf") else None


class _SigmoidScores(torch.autograd.Function):
    """Attention scores w · tanh(p + q) + b with gradients, for training on the CPU.

    Computed as 2w · σ(2z) + (b − Σw), z = p + q, in fp32 (or the inputs' wider type): PyTorch's
    CPU sigmoid runs 10× faster than its tanh in fp32 (0.33 vs 3.3 ms for 30 × 196 × 512 values).
    Rows are taken ``ROWS_PER_CHUNK`` at a time, so u = σ(2z) and the gradient terms are made and
    used while they are in cache: a step's DRAM traffic is reading p (and writing its gradient)
    instead of a dozen passes over (rows, pixels, attention_dim) tensors. Nothing of that size is
    kept for the backward pass, which computes u again and uses ∂score/∂z = 4w · u(1 − u),
    ∂score/∂w = 2u − 1, ∂score/∂b = 1. Row i uses ``projected[i]``; entries past the rows get a
    zero gradient, so the caller need not slice (a slice's backward pass writes the whole tensor).
    """

    # 4 × 196 × 512 fp32 = 1.6 MB: a chunk's u and gradient terms stay in a core's L2
    ROWS_PER_CHUNK = 4

    @staticmethod
    def forward(ctx, projected, hidden, weight, bias):
        # projected (≥ rows, num_pixels, attention_dim), hidden (rows, attention_dim), weight
        # (1, attention_dim), bias (1,); returns scores (rows, num_pixels)
        ctx.save_for_backward(projected, hidden, weight)
        ctx.bias_dtype = bias.dtype
        with torch.autocast(projected.device.type, enabled=False):
            w = _SigmoidScores._weight(projected, weight)
            scores = projected.new_empty(hidden.shape[0], projected.shape[1], dtype=w.dtype)
            for lo, hi, u in _SigmoidScores._chunks(projected, hidden, w):
                torch.matmul(u, 2 * w, out=scores[lo:hi])
            return scores.add_(bias.to(w.dtype) - w.sum())

    @staticmethod
    def backward(ctx, grad):
        projected, hidden, weight = ctx.saved_tensors
        rows = hidden.shape[0]
        with torch.autocast(projected.device.type, enabled=False):
            w = _SigmoidScores._weight(projected, weight)
            grad = grad.to(w.dtype)
            d_projected = projected.new_empty(projected.shape, dtype=w.dtype)
            d_projected[rows:].zero_()
            d_hidden = hidden.new_empty(hidden.shape, dtype=w.dtype)
            grad_u = w.new_zeros(w.shape)  # Σ grad · u over rows and pixels
            for lo, hi, u in _SigmoidScores._chunks(projected, hidden, w):
                g = grad[lo:hi]  # (chunk, num_pixels)
                grad_u.addmv_(u.flatten(0, 1).t(), g.flatten())
                d_z = torch.addcmul(u, u, u, value=-1, out=d_projected[lo:hi])  # u − u²
                d_z.mul_(g.unsqueeze(2)).mul_(4 * w)  # grad · ∂score/∂z
                torch.sum(d_z, dim=1, out=d_hidden[lo:hi])
            d_weight = (2 * grad_u - grad.sum()).view_as(weight)
        return (d_projected.to(projected.dtype), d_hidden.to(hidden.dtype), d_weight.to(weight.dtype),
                grad.sum().view(1).to(ctx.bias_dtype))

    @staticmethod
    def _weight(projected, weight):
        """The score weights as a vector in the working dtype: fp32, or the inputs' wider type."""
        return weight.view(-1).to(torch.promote_types(projected.dtype, torch.float32))

    @staticmethod
    def _chunks(projected, hidden, w):
        """(first row, last row + 1, u = σ(2(p + q)) of those rows) for chunks of the rows of
        ``hidden``; u lives in one reused buffer, valid until the next chunk."""
        rows, size = hidden.shape[0], _SigmoidScores.ROWS_PER_CHUNK
        buffer = projected.new_empty((min(rows, size),) + projected.shape[1:], dtype=w.dtype)
        doubled = 2 * hidden.to(w.dtype).unsqueeze(1)  # 2q: (rows, 1, attention_dim)
        for lo in range(0, rows, size):
            hi = min(rows, lo + size)
            u = torch.add(doubled[lo:hi], projected[lo:hi].to(w.dtype), alpha=2, out=buffer[:hi - lo]).sigmoid_()
            yield lo, hi, u


def _image_runs(image_of: torch.Tensor | None, rows: int, chunk_rows: int):
    """Split rows into chunks of whole images with equal row counts: yields (first row, image
    indices, rows per image). Rows of one image are consecutive (beam search keeps them so)."""
    if image_of is None:
        for first in range(0, rows, chunk_rows):
            yield first, torch.arange(first, min(rows, first + chunk_rows)), 1
        return
    images, counts = torch.unique_consecutive(image_of, return_counts=True)
    counts = counts.tolist()
    first = i = 0
    while i < len(counts):
        per_image = counts[i]
        j = i + 1
        while j < len(counts) and counts[j] == per_image and (j - i + 1) * per_image <= chunk_rows:
            j += 1
        yield first, images[i:j], per_image
        first += (j - i) * per_image
        i = j
