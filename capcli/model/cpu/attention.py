"""The CPU's forms of additive attention: the same function as ``capcli.model.attention``.

Both use tanh(z) = 2σ(2z) − 1, so w · tanh(z) + b = Σ 2w · σ(2z) + (b − Σw): PyTorch's CPU
sigmoid is several times faster than its tanh. Decoding (no gradients) computes
2w · σ(2(p + q)) = 1 / (1/(2w) + e^(−2p) · e^(−2q)/(2w)) with e^(−2p) made once per image, a few
rows at a time so the (rows, pixels, attention_dim) intermediate stays in cache. Training keeps
σ in fp32 with a backward pass of its own that computes σ again instead of storing it.
"""

from __future__ import annotations

import torch

# e^(−2p) is finite and normal in fp32 for |p| ≤ 40; p beyond is clamped there, which changes no
# result while |q| ≤ 30 (then |p + q| > 10 keeps its sign, and σ(2z) is 0 or 1 within 2e-9)
FACTOR_LIMIT = 40.0
ROW_LIMIT = 30.0
DECODING_ROWS_PER_CHUNK = 32  # 32 × 196 × 512 fp32 = 12.8 MB
TRAINING_ROWS_PER_CHUNK = 4  # 4 × 196 × 512 fp32 = 1.6 MB: u and its gradient terms stay in L2


def decoding_factors(projected: torch.Tensor) -> torch.Tensor:
    """e^(−2p) per image in fp32, p clamped to ±``FACTOR_LIMIT``."""
    return projected.float().clamp(-FACTOR_LIMIT, FACTOR_LIMIT).mul_(-2.0).exp_()


def product_form(attention, state, rows_per_chunk: int = DECODING_ROWS_PER_CHUNK):
    """Context and attention of every row of ``state`` (which carries ``decoding_factors`` in
    ``prepared``), or None where a row's term e^(−2q)/(2w) is out of range (a large |q|, a zero
    or huge weight): then the caller uses the textbook form."""
    hidden = attention.decoder_att(state.h)  # (rows, attention_dim)
    weight = 2 * attention.full_att.weight.view(-1).float()  # 2w
    row_terms = _row_terms(hidden, weight)
    if row_terms is None:
        return None
    factors, pixels, image_of = state.prepared, state.pixels, state.image_of
    rows, num_pixels, attention_dim = hidden.shape[0], factors.shape[1], factors.shape[2]
    bias = attention.full_att.bias.item() - attention.full_att.weight.sum().item()  # b − Σw
    base = 1.0 / weight
    runs = list(image_runs(image_of, rows, rows_per_chunk))
    most = max(len(images) * per_image for _, images, per_image in runs)
    z_buffer = torch.empty(most, num_pixels, attention_dim)
    score_buffer = torch.empty(most, num_pixels)
    alpha = torch.empty(rows, num_pixels)
    context = pixels.new_empty(rows, pixels.shape[2])
    with torch.autocast("cpu", enabled=False):  # dtypes are explicit here, as out= needs
        for first, images, per_image in runs:
            count = len(images)
            n, last = count * per_image, first + count * per_image
            low, high = int(images[0]), int(images[-1]) + 1
            if high - low == count:  # consecutive images (the common case): views, no copies
                image_factors, image_pixels = factors[low:high], pixels[low:high]
            else:
                image_factors, image_pixels = factors.index_select(0, images), pixels.index_select(0, images)
            z = z_buffer[:n].view(count, per_image, num_pixels, attention_dim)  # each image's rows side by side
            chunk_rows = row_terms[first:last].view(count, per_image, 1, attention_dim)
            torch.addcmul(base, chunk_rows, image_factors.unsqueeze(1), out=z).reciprocal_()  # 2w · σ(2z)
            torch.sum(z_buffer[:n], dim=2, out=score_buffer[:n])
            torch.softmax(score_buffer[:n] + bias, dim=1, out=alpha[first:last])
            torch.bmm(alpha[first:last].view(count, per_image, num_pixels).to(pixels.dtype),
                      image_pixels, out=context[first:last].view(count, per_image, -1))
    return context, alpha


def _row_terms(hidden: torch.Tensor, weight: torch.Tensor) -> torch.Tensor | None:
    """e^(−2q)/(2w) per row, or None where |q| > ``ROW_LIMIT`` or a term is infinite or subnormal."""
    q = hidden.float()
    low, high = torch.aminmax(q)
    if max(-low.item(), high.item()) > ROW_LIMIT:
        return None
    terms = torch.exp(q * -2.0) / weight
    low, high = torch.aminmax(terms.abs())
    return terms if low.item() >= torch.finfo(torch.float32).tiny and high.item() < float("inf") else None


def sigmoid_form(attention, state):
    """Context and attention of every row of ``state`` through :class:`SigmoidScores` (training,
    validation loss, a2c's sampling: with or without gradients)."""
    projected = state.projected if state.image_of is None else state.projected.index_select(0, state.image_of)
    hidden = attention.decoder_att(state.h)  # (rows, attention_dim)
    scores = SigmoidScores.apply(projected, hidden, attention.full_att.weight, attention.full_att.bias)
    alpha = torch.softmax(scores, dim=1)  # (rows, num_pixels)
    pixels = state.per_row(state.pixels)  # (rows, num_pixels, encoder_dim)
    context = torch.bmm(alpha.unsqueeze(1).to(pixels.dtype), pixels).squeeze(1)  # (rows, encoder_dim)
    return context, alpha


class SigmoidScores(torch.autograd.Function):
    """Attention scores w · tanh(p + q) + b as 2w · σ(2z) + (b − Σw), z = p + q, in fp32 (or the
    inputs' wider type), rows ``TRAINING_ROWS_PER_CHUNK`` at a time.

    Nothing of size (rows, pixels, attention_dim) is kept for the backward pass, which computes
    u = σ(2z) again and uses ∂score/∂z = 4w · u(1 − u), ∂score/∂w = 2u − 1, ∂score/∂b = 1. Row i
    uses ``projected[i]``; entries past the rows get a zero gradient, so the caller need not slice.
    """

    @staticmethod
    def forward(ctx, projected, hidden, weight, bias):
        # projected (≥ rows, num_pixels, attention_dim), hidden (rows, attention_dim), weight
        # (1, attention_dim), bias (1,); returns scores (rows, num_pixels)
        ctx.save_for_backward(projected, hidden, weight)
        ctx.bias_dtype = bias.dtype
        with torch.autocast(projected.device.type, enabled=False):
            w = SigmoidScores._weight(projected, weight)
            scores = projected.new_empty(hidden.shape[0], projected.shape[1], dtype=w.dtype)
            for lo, hi, u in SigmoidScores._chunks(projected, hidden, w):
                torch.matmul(u, 2 * w, out=scores[lo:hi])
            return scores.add_(bias.to(w.dtype) - w.sum())

    @staticmethod
    def backward(ctx, grad):
        projected, hidden, weight = ctx.saved_tensors
        rows = hidden.shape[0]
        with torch.autocast(projected.device.type, enabled=False):
            w = SigmoidScores._weight(projected, weight)
            grad = grad.to(w.dtype)
            d_projected = projected.new_empty(projected.shape, dtype=w.dtype)
            d_projected[rows:].zero_()
            d_hidden = hidden.new_empty(hidden.shape, dtype=w.dtype)
            grad_u = w.new_zeros(w.shape)  # Σ grad · u over rows and pixels
            for lo, hi, u in SigmoidScores._chunks(projected, hidden, w):
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
        rows, size = hidden.shape[0], TRAINING_ROWS_PER_CHUNK
        buffer = projected.new_empty((min(rows, size),) + projected.shape[1:], dtype=w.dtype)
        doubled = 2 * hidden.to(w.dtype).unsqueeze(1)  # 2q: (rows, 1, attention_dim)
        for lo in range(0, rows, size):
            hi = min(rows, lo + size)
            u = torch.add(doubled[lo:hi], projected[lo:hi].to(w.dtype), alpha=2, out=buffer[:hi - lo]).sigmoid_()
            yield lo, hi, u


def image_runs(image_of: torch.Tensor | None, rows: int, chunk_rows: int):
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
