"""Output shapes of every module and a tiny model that overfits one batch."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from capcli.config import ModelConfig
from capcli.model.attention import Attention, _image_runs, _SigmoidScores
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
    assert out.shape == (2, vocab) and state[0].shape == (2, 12)
    assert decoder.embed_dim == (vocab if one_hot else 16)
    assert (decoder.embedding is None) == one_hot


@pytest.mark.parametrize("image_of", [None, [0, 0, 1, 1, 1, 3, 3], [1, 1, 2, 2, 3, 3, 0],
                                      [0, 0, 2, 2, 3, 1, 1]])  # the last: images 0 and 2 in one chunk
@pytest.mark.parametrize("precision", [None, torch.bfloat16])
@pytest.mark.parametrize("form", ["sigmoid", "products"])
def test_attention_without_gradients_is_the_textbook_function(image_of, precision, form):
    """Decoding's path (whole images' rows in chunks of at most 4, sigmoid or product form, pixels
    shared by the rows of an image) gives the scores and contexts of the written-out formula."""
    torch.manual_seed(0)
    attention = Attention(encoder_dim=8, decoder_dim=6, attention_dim=10)
    attention.ROWS_PER_CHUNK = 4  # e.g. rows of images 1, 2 | 3 | 0 for the last mapping
    shared = image_of is not None
    image_of = torch.tensor(image_of) if shared else None
    pixels = torch.randn(4 if shared else 7, 5, 8)
    h = torch.randn(7, 6)
    rows = image_of.tolist() if shared else range(7)
    with torch.no_grad():
        expected_alpha = torch.stack([torch.softmax(attention.full_att(torch.tanh(
            attention.encoder_att(pixels[i]) + attention.decoder_att(h[r]))).squeeze(1), 0)
            for r, i in enumerate(rows)])
        expected_context = torch.stack([expected_alpha[r] @ pixels[i] for r, i in enumerate(rows)])
        with torch.autocast("cpu", dtype=precision or torch.float32, enabled=precision is not None):
            pix = pixels if precision is None else pixels.to(precision)
            projected = attention.encoder_att(pix)
            factors = attention.decoding_factors(projected) if form == "products" else None
            assert (factors is None) == (form == "sigmoid")
            context, alpha = attention(pix, projected, h, image_of, factors)
        with torch.enable_grad():  # training's path, same inputs
            train_context, train_alpha = attention(pixels, attention.encoder_att(pixels), h, image_of)
    tolerance = {} if precision is None else {"atol": 0.05, "rtol": 0.05}
    torch.testing.assert_close(alpha.float(), expected_alpha, **tolerance)
    torch.testing.assert_close(context.float(), expected_context, **tolerance)
    torch.testing.assert_close(train_alpha, expected_alpha)
    torch.testing.assert_close(train_context, expected_context)
    assert alpha.shape == (7, 5) and context.shape == (7, 8)


def test_bf16_attention_stays_as_accurate_as_the_textbook_form_when_the_weights_sum_large():
    """2w · σ(2z) products are rounded at the size of Σw in bf16; the decoding path centres σ
    then, so its attention error stays near the textbook bf16 path's."""
    torch.manual_seed(0)
    attention = Attention(encoder_dim=256, decoder_dim=128, attention_dim=512)
    pixels, h = torch.randn(16, 196, 256).abs(), torch.randn(16, 128)
    with torch.no_grad():
        attention.full_att.weight.copy_(torch.randn(1, 512) * 4 / 512 ** 0.5 + 0.05)  # Σw ≈ 25
        exact = attention(pixels, attention.encoder_att(pixels), h)[1]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            pix = pixels.to(torch.bfloat16)
            projected = attention.encoder_att(pix)
            decoding = attention(pix, projected, h)[1]
            products = attention(pix, projected, h, None, attention.decoding_factors(projected))[1]
            textbook = torch.softmax(attention.full_att(torch.tanh(
                projected + attention.decoder_att(h).unsqueeze(1))).squeeze(2), dim=1)
    decoding_error = float((decoding.float() - exact).abs().max())
    products_error = float((products.float() - exact).abs().max())
    textbook_error = float((textbook.float() - exact).abs().max())
    assert decoding_error < 3 * textbook_error, (decoding_error, textbook_error)
    assert products_error < textbook_error, (products_error, textbook_error)  # fp32 terms


def _small_attention(seed: int = 0):
    torch.manual_seed(seed)
    return Attention(encoder_dim=8, decoder_dim=6, attention_dim=10), torch.randn(3, 5, 8), torch.randn(3, 6)


def test_attention_product_form_keeps_factors_only_while_they_stay_finite():
    """e^(−2p) is kept only while every |p| ≤ 40 (finite and normal in fp32)."""
    attention, pixels, _ = _small_attention()
    with torch.no_grad():
        projected = attention.encoder_att(pixels)
        for largest, kept in ((39.5, True), (40.5, False), (-40.5, False)):
            edge = projected.clone()
            edge[0, 0, 0] = largest
            assert (attention.decoding_factors(edge) is not None) == kept, largest
    with torch.enable_grad():
        assert attention.decoding_factors(projected) is None  # training keeps the textbook form


@pytest.mark.parametrize("case", ["plain", "negative weights", "zero weight", "huge weight", "q -60", "q +60"])
def test_attention_product_form_matches_or_falls_back_to_the_sigmoid_form(case):
    """Where a per-row term e^(−2q)/(2w) would be infinite or subnormal (a zero or huge weight, a
    very negative or very positive q), that step uses the sigmoid form; either way the results
    are those of the sigmoid form, all finite."""
    attention, pixels, h = _small_attention()
    with torch.no_grad():
        weight = attention.full_att.weight
        if case == "negative weights":
            weight.copy_(-weight.abs())
        elif case == "zero weight":
            weight[0, 3] = 0.0
        elif case == "huge weight":  # e^(−78) / 2e15 underflows, though e^(−2(p + q)) = 1 at p = −39
            weight[0, 3] = 1e15
            attention.decoder_att.bias[3] = 39.0
        elif case in ("q -60", "q +60"):  # e^(−2q) overflows / underflows in fp32
            attention.decoder_att.bias.fill_(float(case[2:]))
        projected = attention.encoder_att(pixels)
        if case == "huge weight":
            projected[:, :2, 3] = -39.0  # two pixels where that term's σ is ½, not 1
        factors = attention.decoding_factors(projected)
        assert factors is not None
        terms = attention._product_terms(attention.decoder_att(h).unsqueeze(1), 2 * weight.view(-1))
        assert (terms is None) == (case not in ("plain", "negative weights"))
        context, alpha = attention(pixels, projected, h, None, factors)
        torch.testing.assert_close((context, alpha), attention(pixels, projected, h))
        assert torch.isfinite(alpha).all() and torch.isfinite(context).all()


@pytest.mark.parametrize("decoder_name", ["attention", "plain"])
@pytest.mark.parametrize("one_hot", [False, True])
def test_decoding_cell_matches_the_lstm_cell_and_follows_weight_changes(decoder_name, one_hot):
    """Without gradients the cell reads the words' gates from a per-vocabulary table and takes
    tanh as 2σ(2x) − 1: the same h and c as nn.LSTMCell, in fp32 and under bf16 autocast, and the
    table is made again after an optimiser step changes the weights."""
    torch.manual_seed(0)
    _, decoder = build_model(ModelConfig(vocab_size=11, encoder="resnet18", decoder=decoder_name, one_hot=one_hot,
                                         embed_dim=16, attention_dim=8, decoder_dim=12))
    words = torch.tensor([3, 0, 10, 3])
    rest = torch.randn(4, 512) if decoder_name == "attention" else None
    state = (torch.randn(4, 12), torch.randn(4, 12))

    def textbook():
        x = decoder.embed(words) if rest is None else torch.cat([decoder.embed(words), rest], dim=1)
        return decoder.lstm(x, state)

    optimizer = torch.optim.SGD(decoder.parameters(), lr=0.5)
    for _ in range(2):
        with torch.no_grad():
            torch.testing.assert_close(decoder.cell(words, rest, state), textbook(), atol=2e-6, rtol=1e-5)
        torch.cat([p.flatten() for p in textbook()]).sum().backward()  # with gradients: nn.LSTMCell
        optimizer.step()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        low = decoder.cell(words, rest, state)
    with torch.no_grad():
        torch.testing.assert_close(low, textbook(), atol=0.05, rtol=0.05)


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


def _textbook_scores(projected, hidden, weight, bias):
    return torch.tanh(projected[:hidden.shape[0]] + hidden.unsqueeze(1)) @ weight.view(-1) + bias


def test_training_scores_have_the_textbook_gradients():
    """Training's sigmoid form (u = σ(2z) computed again for the backward pass) against autograd
    through the textbook formula: every gradient in fp64 (gradcheck) and in fp32,
    with projected holding more entries than there are rows (the caller does not slice)."""
    torch.manual_seed(0)
    for dtype in (torch.float64, torch.float32):
        inputs = [torch.randn(23, 7, 10, dtype=dtype), torch.randn(19, 10, dtype=dtype),
                  torch.randn(1, 10, dtype=dtype), torch.randn(1, dtype=dtype)]
        inputs = [x.requires_grad_() for x in inputs]
        if dtype == torch.float64:
            assert torch.autograd.gradcheck(_SigmoidScores.apply, inputs)
            continue
        grad = torch.randn(19, 7)
        scores = _SigmoidScores.apply(*inputs)
        ours = torch.autograd.grad(scores, inputs, grad)
        expected = _textbook_scores(*inputs)
        torch.testing.assert_close(scores, expected)
        torch.testing.assert_close(ours, torch.autograd.grad(expected, inputs, grad))
        assert ours[0][19:].abs().sum() == 0 and ours[0][:19].abs().sum((1, 2)).min() > 0


def test_bf16_training_attention_gradients_are_closer_than_the_textbook_bf16_ones():
    """Under bf16 autocast training's attention works in fp32, so its gradients sit nearer the
    exact (fp64) ones than the textbook formula's bf16 gradients do."""
    torch.manual_seed(0)
    attention = Attention(encoder_dim=64, decoder_dim=32, attention_dim=128)
    pixels, h = torch.randn(8, 49, 64), torch.randn(8, 32)
    grad = torch.randn(8, 49)

    def gradients(fn, dtype, autocast):
        params = [p.detach().to(dtype).requires_grad_() for p in attention.parameters()]
        enc_w, enc_b, dec_w, dec_b, full_w, full_b = params
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            projected = F.linear(pixels.to(dtype), enc_w, enc_b)
            projected = projected.float() if fn is _SigmoidScores.apply else projected
            scores = fn(projected, F.linear(h.to(dtype), dec_w, dec_b), full_w, full_b)
        return [g.double() for g in torch.autograd.grad(scores.float(), params, grad)]

    exact = gradients(_textbook_scores, torch.float64, False)
    ours = gradients(_SigmoidScores.apply, torch.float32, True)
    textbook = gradients(_textbook_scores, torch.float32, True)
    for e, o, t in zip(exact, ours, textbook):
        ours_error, textbook_error = float((o - e).abs().max()), float((t - e).abs().max())
        assert ours_error <= textbook_error, (ours_error, textbook_error)


def test_image_runs_keep_images_whole_and_row_counts_equal():
    runs = [(first, images.tolist(), per_image)
            for first, images, per_image in _image_runs(torch.tensor([1, 1, 2, 2, 3, 3, 0]), 7, 4)]
    assert runs == [(0, [1, 2], 2), (4, [3], 2), (6, [0], 1)]
    runs = [(first, images.tolist(), per_image) for first, images, per_image in _image_runs(None, 5, 2)]
    assert runs == [(0, [0, 1], 1), (2, [2, 3], 1), (4, [4], 1)]
    assert [len(i) * k for _, i, k in _image_runs(torch.zeros(7, dtype=torch.long), 7, 4)] == [7]  # never split


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
