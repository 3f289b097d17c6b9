"""The kernels' check of themselves on this torch: before the first use in a process, each kernel
computes a tiny model's result in its form and in the textbook form, and is trusted only if the two
agree. A torch release that changed an operator's meaning then costs the fast path, not the
results. Each check runs once per process, on its own random numbers (the caller's are kept).
"""

from __future__ import annotations

import functools

import torch

from capcli.model.decoder import AttentionDecoder
from capcli.model.decoding import beam_search
from capcli.model.encoder import SMALL, Encoder

_TOLERANCE = {"atol": 1e-4, "rtol": 1e-4}
_FAILURES = (RuntimeError, TypeError, AttributeError, NotImplementedError, ValueError, AssertionError)


@functools.cache
def encoder_problem() -> str | None:
    """Why the fused encoder is not trusted here, None when it gives the textbook features."""
    from capcli.model.cpu.encoder import FusedEncoder, available

    if not available():
        return "this torch has no oneDNN fused convolution"
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(0)
        encoder = Encoder(SMALL, encoded_size=2).eval()
        for module in encoder.modules():
            if isinstance(module, torch.nn.BatchNorm2d):  # statistics other than 0 and 1, so folding matters
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
        images = torch.rand(2, 3, 32, 32)
        return _compared("fused encoder", lambda: FusedEncoder()(encoder, images), lambda: encoder(images))


@functools.cache
def decoder_problem(group: type) -> str | None:
    """Why the attention and cell forms (``group``: the decoder's kernel group) are not trusted
    here, None when training (logits and gradients) and beam search give the textbook results."""
    with torch.random.fork_rng(devices=[]), torch.enable_grad():
        torch.manual_seed(0)
        decoder = AttentionDecoder(vocab_size=9, encoder_dim=8, embed_dim=6, attention_dim=5, decoder_dim=4,
                                   dropout=0.0)
        features = torch.randn(2, 3, 3, 8)  # (batch, grid, grid, encoder_dim)
        captions, lengths = torch.randint(3, 9, (3, 6)), torch.tensor([5, 3, 6])
        image_of = torch.tensor([0, 0, 1])

        def run():
            logits, alphas = decoder(features, captions, lengths, 1.0, image_of)
            grads = torch.autograd.grad(logits.square().mean() + alphas.square().mean(), list(decoder.parameters()))
            decoder.eval()
            with torch.no_grad():
                decoded = beam_search(decoder, features, 1, 2, 6, beam_size=2)
            decoder.train()
            scores = torch.tensor([d.score for d in decoded])
            return [logits, alphas, *grads, scores, *(d.attention for d in decoded)], [d.tokens for d in decoded]

        def kernels():
            decoder.kernels = checked = group()
            try:
                result = run()
            finally:
                decoder.kernels = None
            if not checked.on:
                raise RuntimeError("a kernel failed (debug log above)")
            return result

        return _compared("attention and cell", kernels, run)


def _compared(name: str, kernel, textbook) -> str | None:
    try:
        ours, theirs = kernel(), textbook()
        if ours is None:
            return f"{name}: declined the check's input"
        if isinstance(ours, tuple):
            assert ours[1] == theirs[1], "other decoded words"
            ours, theirs = ours[0], theirs[0]
        torch.testing.assert_close(ours, theirs, **_TOLERANCE)
    except _FAILURES as exc:
        return f"{name}: {type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
    return None
