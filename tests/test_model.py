"""The textbook model: output shapes of every module, shared images, and a tiny model that
overfits one batch. (The CPU kernels' forms are compared with it in test_cpu_kernels.py.)"""

from __future__ import annotations

import pytest
import torch

from capcli.config import ModelConfig
from capcli.model.attention import Attention
from capcli.model.captioner import build_model
from capcli.model.loss import caption_loss


@pytest.mark.parametrize("encoder_name,channels", [("resnet18", 512), ("resnet34", 512), ("resnet50", 2048)])
@pytest.mark.parametrize("decoder_name", ["attention", "plain"])
@pytest.mark.parametrize("one_hot", [False, True])
def test_output_shapes(encoder_name, channels, decoder_name, one_hot):
    vocab = 23
    config = ModelConfig(vocab_size=vocab, encoder=encoder_name, decoder=decoder_name, one_hot=one_hot,
                         embed_dim=16, attention_dim=8, decoder_dim=12)
    encoder, decoder = build_model(config)
    images = torch.rand(2, 3, 32, 32)
    features = encoder(images)
    assert features.shape == (2, 14, 14, channels)
    captions = torch.tensor([[21, 3, 4, 5, 22, 0, 0], [21, 6, 22, 0, 0, 0, 0]])
    lengths = torch.tensor([3, 5])  # shortest first: forward sorts, and must restore the order
    captions = captions.flip(0)
    decoder.eval()
    logits, alphas = decoder(features, captions, lengths)
    assert logits.shape == (2, 4, vocab)
    real = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]], dtype=torch.bool)
    if decoder_name == "attention":
        assert alphas.shape == (2, 4, 196)
        torch.testing.assert_close(alphas.sum(dim=2), real.float())  # padding positions are not computed
    else:
        assert alphas is None
    assert (logits[~real] == 0).all()
    for i in range(2):  # each caption's real positions equal stepping through it alone
        state = decoder.init_state(features[i:i + 1])
        for t in range(int(lengths[i]) - 1):
            out, _, state = decoder.step(captions[i:i + 1, t], state)
            torch.testing.assert_close(out[0], logits[i, t], atol=1e-5, rtol=1e-4)
    state = decoder.init_state(features)
    out, alpha, state = decoder.step(captions[:, 0], state)
    assert out.shape == (2, vocab) and state.h.shape == (2, 12)
    assert decoder.embed_dim == (vocab if one_hot else 16)
    assert (decoder.embedding is None) == one_hot


def test_attention_is_the_papers_formula_row_by_row():
    """Batched over rows, each row's scores w · tanh(W_e p + W_d h) + b, softmax over the pixels,
    and the context as the weighted sum of its pixels."""
    torch.manual_seed(0)
    attention = Attention(encoder_dim=8, decoder_dim=6, attention_dim=10)
    pixels, h = torch.randn(4, 5, 8), torch.randn(4, 6)
    with torch.no_grad():
        context, alpha = attention(pixels, attention.encoder_att(pixels), h)
        for r in range(4):
            e = attention.full_att(torch.tanh(attention.encoder_att(pixels[r]) + attention.decoder_att(h[r])))
            weights = torch.softmax(e.squeeze(1), dim=0)  # (num_pixels,)
            torch.testing.assert_close(alpha[r], weights)
            torch.testing.assert_close(context[r], (weights.unsqueeze(1) * pixels[r]).sum(dim=0))
    assert context.shape == (4, 8) and alpha.shape == (4, 5)


@pytest.mark.parametrize("decoder_name", ["attention", "plain"])
def test_captions_sharing_their_image_train_as_with_repeated_features(decoder_name):
    """forward(features per image, image_of), what training runs, gives the logits, attention and
    gradients of forward(features repeated per caption)."""
    torch.manual_seed(0)
    _, decoder = build_model(ModelConfig(vocab_size=13, encoder="resnet18", decoder=decoder_name, embed_dim=16,
                                         attention_dim=8, decoder_dim=12, dropout=0.0))
    features = torch.randn(3, 14, 14, 512)
    image_of = torch.tensor([0, 0, 1, 1, 1, 2])
    captions = torch.randint(3, 13, (6, 7))
    lengths = torch.tensor([4, 6, 3, 7, 5, 6])

    def run(*inputs):
        logits, alphas = decoder(*inputs)
        loss = logits.square().mean() + (0 if alphas is None else alphas.square().mean())
        return [logits, alphas], torch.autograd.grad(loss, list(decoder.parameters()))

    ours, ours_grads = run(features, captions, lengths, 1.0, image_of)
    expected, expected_grads = run(features[image_of], captions, lengths)
    torch.testing.assert_close(ours, expected)
    torch.testing.assert_close(ours_grads, expected_grads)


@pytest.mark.parametrize("kernels", [False, True])
def test_captions_sharing_their_image_keep_no_more_for_backward_than_repeated_features(kernels):
    """Each word's attention takes views of the running captions' pixels: the tensors saved for
    the backward pass are no larger than with the features repeated per caption (a per-word
    gather kept a copy of every caption's pixels for every word)."""
    from capcli.model import cpu

    torch.manual_seed(0)
    _, decoder = build_model(ModelConfig(vocab_size=13, encoder="resnet18", embed_dim=16, attention_dim=8,
                                         decoder_dim=12, dropout=0.0))
    if kernels:
        assert cpu.enable(torch.device("cpu"), decoder=decoder)
    features = torch.randn(4, 14, 14, 512)
    image_of = torch.arange(4).repeat_interleave(5)
    captions, lengths = torch.randint(3, 13, (20, 14)), torch.full((20,), 14)

    def saved_bytes(*inputs) -> int:
        storages = {}

        def pack(t):
            storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            decoder(*inputs)
        return sum(storages.values())

    shared = saved_bytes(features, captions, lengths, 1.0, image_of)
    repeated = saved_bytes(features[image_of], captions, lengths)
    assert shared <= repeated + features.nbytes, (shared, repeated)  # + the per-image features themselves


@pytest.mark.parametrize("decoder_name", ["attention", "plain"])
def test_output_layer_run_once_after_the_loop_gives_the_per_word_logits_and_gradients(decoder_name):
    """Pure teacher forcing runs the output layer once over every real position; a teacher-forcing
    ratio just under 1 (the model's word is, in practice, never taken) runs it word by word, as
    sampling needs. Both give the same logits, zero at padding, and the same gradients."""
    torch.manual_seed(0)
    _, decoder = build_model(ModelConfig(vocab_size=13, encoder="resnet18", decoder=decoder_name, embed_dim=16,
                                         attention_dim=8, decoder_dim=12, dropout=0.0))
    features = torch.randn(4, 14, 14, 512)
    captions = torch.randint(3, 13, (4, 7))
    lengths = torch.tensor([4, 7, 3, 6])

    def run(teacher_forcing):
        logits, _ = decoder(features, captions, lengths, teacher_forcing)
        return logits, torch.autograd.grad(logits.square().mean(), list(decoder.parameters()))

    once, once_grads = run(1.0)
    per_word, per_word_grads = run(1.0 - 1e-12)
    torch.testing.assert_close(once, per_word)
    torch.testing.assert_close(once_grads, per_word_grads)
    padding = torch.arange(6) >= (lengths - 1).unsqueeze(1)
    assert (once[padding] == 0).all() and (once[~padding] != 0).all()


def test_fine_tune_unfreezes_stages_2_to_4_only():
    encoder, _ = build_model(ModelConfig(vocab_size=5, encoder="resnet18"))
    assert not any(p.requires_grad for p in encoder.parameters())
    encoder.set_fine_tune(True)
    stages = list(encoder.resnet.children())
    assert not any(p.requires_grad for s in stages[:5] for p in s.parameters())
    assert all(p.requires_grad for s in stages[5:] for p in s.parameters())


@pytest.mark.parametrize("decoder_name", ["attention", "plain"])
def test_tiny_model_overfits_one_batch(decoder_name):
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=12, encoder="resnet18", decoder=decoder_name, embed_dim=32,
                         attention_dim=32, decoder_dim=64, dropout=0.0)
    _, decoder = build_model(config)
    features = torch.randn(4, 14, 14, 512)
    captions = torch.tensor([[10, 1, 2, 3, 11, 0], [10, 4, 5, 11, 0, 0], [10, 6, 7, 8, 9, 11], [10, 2, 2, 11, 0, 0]])
    lengths = torch.tensor([5, 4, 6, 4])
    optimizer = torch.optim.Adam(decoder.parameters(), lr=3e-3)
    first = None
    for _ in range(150):
        logits, alphas = decoder(features, captions, lengths)
        loss, top5 = caption_loss(logits, alphas, captions, lengths, alpha_c=0.0)
        first = first if first is not None else loss.item()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert first > 2.0
    assert loss.item() < 0.05
    assert top5.item() == 100.0


def test_loss_ignores_padding():
    logits = torch.zeros(1, 3, 5)
    logits[0, 0, 2] = 10.0  # the two real positions predict 2 then <end> (4) confidently
    logits[0, 1, 4] = 10.0
    logits[0, 2, 1] = 10.0  # a wrong guess at the padded position must not count
    captions = torch.tensor([[3, 2, 4, 0]])
    loss, top5 = caption_loss(logits, None, captions, torch.tensor([3]), alpha_c=1.0)
    assert loss.item() < 1e-3
    assert top5.item() == 100.0
    alphas = torch.full((1, 3, 2), 0.5)  # Σ over the 2 real steps is 1 per pixel: no penalty
    with_attention, _ = caption_loss(logits, alphas, captions, torch.tensor([3]), alpha_c=1.0)
    assert abs(with_attention.item() - loss.item()) < 1e-6
