"""capcli.model.cpu: every CPU form against the textbook form it replaces, the switch, and the
fallbacks (a kernel that declines or fails leaves the textbook result)."""

from __future__ import annotations

import logging

import pytest
import torch
import torch.nn.functional as F

from capcli.config import ModelConfig
from capcli.model import cpu
from capcli.model.attention import Attention
from capcli.model.captioner import build_model
from capcli.model.cpu import attention as cpu_attention
from capcli.model.cpu import encoder as cpu_encoder
from capcli.model.cpu import selfcheck
from capcli.model.cpu.lstm import TableCell
from capcli.model.decoder import DecoderState
from capcli.model.decoding import beam_search

CPU = torch.device("cpu")


def _decoding_state(attention, pixels, h, image_of):
    projected = attention.encoder_att(pixels)
    return DecoderState(h, torch.zeros_like(h), pixels, projected, image_of, True,
                        cpu_attention.decoding_factors(projected))


def _textbook(attention, state):
    return attention(state.per_row(state.pixels), state.per_row(state.projected), state.h)


@pytest.mark.parametrize("image_of", [None, [0, 0, 1, 1, 1, 3, 3], [1, 1, 2, 2, 3, 3, 0],
                                      [0, 0, 2, 2, 3, 1, 1]])  # the last: images 0 and 2 in one chunk
@pytest.mark.parametrize("precision", [None, torch.bfloat16])
def test_product_form_is_the_textbook_attention(image_of, precision):
    """Decoding's form (whole images' rows in chunks of at most 4, pixels shared by the rows of an
    image) gives the textbook scores and contexts."""
    torch.manual_seed(0)
    attention = Attention(encoder_dim=8, decoder_dim=6, attention_dim=10)
    shared = image_of is not None
    image_of = torch.tensor(image_of) if shared else None
    pixels, h = torch.randn(4 if shared else 7, 5, 8), torch.randn(7, 6)
    with torch.no_grad():
        expected_context, expected_alpha = _textbook(attention, _decoding_state(attention, pixels, h, image_of))
        with torch.autocast("cpu", dtype=precision or torch.float32, enabled=precision is not None):
            state = _decoding_state(attention, pixels if precision is None else pixels.to(precision), h, image_of)
            context, alpha = cpu_attention.product_form(attention, state, rows_per_chunk=4)
    tolerance = {} if precision is None else {"atol": 0.05, "rtol": 0.05}
    torch.testing.assert_close(alpha.float(), expected_alpha, **tolerance)
    torch.testing.assert_close(context.float(), expected_context, **tolerance)
    assert alpha.shape == (7, 5) and context.shape == (7, 8)


def test_bf16_product_form_is_closer_to_fp32_than_the_textbook_bf16_form():
    """The product form's terms are fp32 whatever the precision, also where Σw is large."""
    torch.manual_seed(0)
    attention = Attention(encoder_dim=256, decoder_dim=128, attention_dim=512)
    pixels, h = torch.randn(16, 196, 256).abs(), torch.randn(16, 128)
    with torch.no_grad():
        attention.full_att.weight.copy_(torch.randn(1, 512) * 4 / 512 ** 0.5 + 0.05)  # Σw ≈ 25
        exact = _textbook(attention, _decoding_state(attention, pixels, h, None))[1]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            state = _decoding_state(attention, pixels.to(torch.bfloat16), h, None)
            products = cpu_attention.product_form(attention, state)[1]
            textbook = _textbook(attention, state)[1]
    products_error = float((products.float() - exact).abs().max())
    textbook_error = float((textbook.float() - exact).abs().max())
    assert products_error < textbook_error, (products_error, textbook_error)


@pytest.mark.parametrize("largest", [39.5, 40.5, 300.0, -300.0])
def test_product_form_clamps_large_pixel_projections_without_changing_the_result(largest):
    """e^(−2p) is made from p clamped to ±40 (finite and normal in fp32): σ(2(p + q)) is 0 or 1
    there to fp32 precision while |q| ≤ 30, as the form checks."""
    torch.manual_seed(0)
    attention = Attention(encoder_dim=8, decoder_dim=6, attention_dim=10)
    pixels, h = torch.randn(3, 5, 8), torch.randn(3, 6)
    with torch.no_grad():
        state = _decoding_state(attention, pixels, h, None)
        projected = state.projected.clone()
        projected[:, :3, :4] = largest
        state = DecoderState(h, h, pixels, projected, None, True, cpu_attention.decoding_factors(projected))
        assert torch.isfinite(state.prepared).all() and (state.prepared > 0).all()
        torch.testing.assert_close(cpu_attention.product_form(attention, state), _textbook(attention, state))


@pytest.mark.parametrize("case", ["plain", "negative weights", "zero weight", "huge weight", "q -60", "q +60",
                                  "q 31"])
def test_product_form_declines_where_a_row_term_is_out_of_range(case):
    """Where e^(−2q)/(2w) would be infinite or subnormal (a zero or huge weight, a very negative
    or positive q), or |q| > 30 (where clamping p could change σ), the form declines and the
    decoder's attention is the textbook one, all finite."""
    torch.manual_seed(0)
    _, decoder = build_model(ModelConfig(vocab_size=7, encoder="resnet18", embed_dim=4, attention_dim=10,
                                         decoder_dim=6))
    attention = decoder.attention
    pixels, h = torch.randn(3, 5, 512), torch.randn(3, 6)
    with torch.no_grad():
        weight = attention.full_att.weight
        if case == "negative weights":
            weight.copy_(-weight.abs())
        elif case == "zero weight":
            weight[0, 3] = 0.0
        elif case == "huge weight":  # e^(−50) / 2e16 is subnormal
            weight[0, 3] = 1e16
            attention.decoder_att.bias[3] = 25.0
        elif case.startswith("q "):
            attention.decoder_att.bias.fill_(float(case[2:]))
        state = _decoding_state(attention, pixels, h, None)
        declined = cpu_attention.product_form(attention, state) is None
        assert declined == (case not in ("plain", "negative weights"))
        cpu.enable(CPU, decoder=decoder)
        context, alpha = decoder.attend(state)
        torch.testing.assert_close((context, alpha), _textbook(attention, state))
        assert torch.isfinite(alpha).all() and torch.isfinite(context).all()


def _textbook_scores(projected, hidden, weight, bias):
    return torch.tanh(projected[:hidden.shape[0]] + hidden.unsqueeze(1)) @ weight.view(-1) + bias


def test_sigmoid_form_scores_have_the_textbook_values_and_gradients():
    """Training's form (u = σ(2z) computed again for the backward pass) against autograd through
    the textbook formula: in fp64 (gradcheck) and in fp32, with projected holding more entries
    than there are rows (the caller does not slice)."""
    torch.manual_seed(0)
    for dtype in (torch.float64, torch.float32):
        inputs = [torch.randn(23, 7, 10, dtype=dtype), torch.randn(19, 10, dtype=dtype),
                  torch.randn(1, 10, dtype=dtype), torch.randn(1, dtype=dtype)]
        inputs = [x.requires_grad_() for x in inputs]
        if dtype == torch.float64:
            assert torch.autograd.gradcheck(cpu_attention.SigmoidScores.apply, inputs)
            continue
        grad = torch.randn(19, 7)
        scores = cpu_attention.SigmoidScores.apply(*inputs)
        ours = torch.autograd.grad(scores, inputs, grad)
        expected = _textbook_scores(*inputs)
        torch.testing.assert_close(scores, expected)
        torch.testing.assert_close(ours, torch.autograd.grad(expected, inputs, grad))
        assert ours[0][19:].abs().sum() == 0 and ours[0][:19].abs().sum((1, 2)).min() > 0


def test_bf16_sigmoid_form_gradients_are_closer_than_the_textbook_bf16_ones():
    """Under bf16 autocast training's form works in fp32, so its gradients sit nearer the exact
    (fp64) ones than the textbook formula's bf16 gradients do."""
    torch.manual_seed(0)
    attention = Attention(encoder_dim=64, decoder_dim=32, attention_dim=128)
    pixels, h = torch.randn(8, 49, 64), torch.randn(8, 32)
    grad = torch.randn(8, 49)
    sigmoid = cpu_attention.SigmoidScores.apply

    def gradients(fn, dtype, autocast):
        params = [p.detach().to(dtype).requires_grad_() for p in attention.parameters()]
        enc_w, enc_b, dec_w, dec_b, full_w, full_b = params
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            projected = F.linear(pixels.to(dtype), enc_w, enc_b)
            projected = projected.float() if fn is sigmoid else projected
            scores = fn(projected, F.linear(h.to(dtype), dec_w, dec_b), full_w, full_b)
        return [g.double() for g in torch.autograd.grad(scores.float(), params, grad)]

    exact = gradients(_textbook_scores, torch.float64, False)
    ours = gradients(sigmoid, torch.float32, True)
    textbook = gradients(_textbook_scores, torch.float32, True)
    for e, o, t in zip(exact, ours, textbook):
        ours_error, textbook_error = float((o - e).abs().max()), float((t - e).abs().max())
        assert ours_error <= textbook_error, (ours_error, textbook_error)


def test_image_runs_keep_images_whole_and_row_counts_equal():
    runs = [(first, images.tolist(), per_image)
            for first, images, per_image in cpu_attention.image_runs(torch.tensor([1, 1, 2, 2, 3, 3, 0]), 7, 4)]
    assert runs == [(0, [1, 2], 2), (4, [3], 2), (6, [0], 1)]
    runs = [(first, images.tolist(), per_image) for first, images, per_image in cpu_attention.image_runs(None, 5, 2)]
    assert runs == [(0, [0, 1], 1), (2, [2, 3], 1), (4, [4], 1)]
    assert [len(i) * k for _, i, k in cpu_attention.image_runs(torch.zeros(7, dtype=torch.long), 7, 4)] == [7]


@pytest.mark.parametrize("decoder_name", ["attention", "plain"])
@pytest.mark.parametrize("one_hot", [False, True])
def test_table_cell_is_the_lstm_cell_and_follows_weight_changes(decoder_name, one_hot):
    """The decoding cell (words' gates from a per-vocabulary table, tanh as 2σ(2x) − 1) gives
    nn.LSTMCell's h and c in fp32 and under bf16 autocast, and its table is made again after an
    optimiser step changes the weights."""
    torch.manual_seed(0)
    _, decoder = build_model(ModelConfig(vocab_size=11, encoder="resnet18", decoder=decoder_name, one_hot=one_hot,
                                         embed_dim=16, attention_dim=8, decoder_dim=12))
    words = torch.tensor([3, 0, 10, 3])
    rest = torch.randn(4, 512) if decoder_name == "attention" else None
    h, c = torch.randn(4, 12), torch.randn(4, 12)
    cell = TableCell()

    def textbook():
        x = decoder.embed(words) if rest is None else torch.cat([decoder.embed(words), rest], dim=1)
        return decoder.lstm(x, (h, c))

    optimizer = torch.optim.SGD(decoder.parameters(), lr=0.5)
    for _ in range(2):
        with torch.no_grad():
            torch.testing.assert_close(cell(decoder, words, rest, h, c), textbook(), atol=2e-6, rtol=1e-5)
        torch.cat([p.flatten() for p in textbook()]).sum().backward()
        optimizer.step()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        low = cell(decoder, words, rest, h, c)
    with torch.no_grad():
        torch.testing.assert_close(low, textbook(), atol=0.05, rtol=0.05)


def _model(decoder_name="attention", seed=0):
    torch.manual_seed(seed)
    encoder, decoder = build_model(ModelConfig(vocab_size=13, encoder="resnet18", decoder=decoder_name,
                                               embed_dim=16, attention_dim=8, decoder_dim=12, dropout=0.0))
    return encoder.eval(), decoder


@pytest.mark.parametrize("decoder_name", ["attention", "plain"])
def test_training_with_the_kernels_gives_the_textbook_logits_and_gradients(decoder_name):
    """What training runs (captions sharing their image), with and without the kernels; without
    gradients (validation loss) the kernels run the same numerics as with them."""
    _, decoder = _model(decoder_name)
    features = torch.randn(3, 14, 14, 512)
    image_of = torch.tensor([0, 0, 1, 1, 1, 2])
    captions, lengths = torch.randint(3, 13, (6, 7)), torch.tensor([4, 6, 3, 7, 5, 6])

    def run():
        logits, alphas = decoder(features, captions, lengths, 1.0, image_of)
        loss = logits.square().mean() + (0 if alphas is None else alphas.square().mean())
        return [logits, alphas], torch.autograd.grad(loss, list(decoder.parameters()))

    textbook, textbook_grads = run()
    assert cpu.enable(CPU, decoder=decoder)
    ours, ours_grads = run()
    torch.testing.assert_close(ours, textbook)
    torch.testing.assert_close(ours_grads, textbook_grads)
    with torch.no_grad():
        assert torch.equal(decoder(features, captions, lengths, 1.0, image_of)[0], ours[0])


@pytest.mark.parametrize("precision", [None, torch.bfloat16])
def test_beam_search_with_the_kernels_finds_the_textbook_captions(precision):
    encoder, decoder = _model(seed=1)
    decoder.eval()
    features = torch.randn(6, 14, 14, 512)

    def decode():
        with torch.autocast("cpu", dtype=precision or torch.float32, enabled=precision is not None):
            return beam_search(decoder, features, 1, 2, 8, beam_size=3)

    textbook = decode()
    cpu.enable(CPU, encoder, decoder)
    ours = decode()
    assert [d.tokens for d in ours] == [d.tokens for d in textbook]
    tolerance = 1e-4 if precision is None else 0.05
    for a, b in zip(ours, textbook):
        assert a.score == pytest.approx(b.score, abs=tolerance * max(1.0, abs(b.score)))
        torch.testing.assert_close(a.attention, b.attention, atol=tolerance * 10, rtol=tolerance * 10)


def test_a_failing_kernel_falls_back_to_the_textbook_form_with_one_debug_line(monkeypatch, caplog):
    encoder, decoder = _model()
    decoder.eval()
    features = torch.randn(2, 14, 14, 512)
    textbook = beam_search(decoder, features, 1, 2, 6, beam_size=2)
    cpu.enable(CPU, encoder, decoder)

    def broken(*args, **kwargs):
        raise RuntimeError("mkldnn::_convolution_pointwise() expected at most 9 argument(s)")

    monkeypatch.setattr(cpu_attention, "product_form", broken)
    with caplog.at_level(logging.DEBUG, logger="capcli.model.cpu"):
        ours = beam_search(decoder, features, 1, 2, 6, beam_size=2)
    assert [d.tokens for d in ours] == [d.tokens for d in textbook]
    assert [r.message for r in caplog.records if "attention failed" in r.message] != []
    assert len([r for r in caplog.records if r.name == "capcli.model.cpu"]) == 1
    assert not decoder.kernels.on


def test_kernels_are_off_off_the_cpu_or_when_switched_off(monkeypatch):
    encoder, decoder = _model()
    assert not cpu.enable(torch.device("meta"), encoder, decoder)
    assert encoder.kernels is None and decoder.kernels is None
    monkeypatch.setenv("CAPCLI_CPU_KERNELS", "0")
    assert not cpu.enable(CPU, encoder, decoder)
    assert encoder.kernels is None and decoder.kernels is None
    assert cpu.status() == {"encoder": "off (CAPCLI_CPU_KERNELS=0)", "decoder": "off (CAPCLI_CPU_KERNELS=0)"}
    monkeypatch.setenv("CAPCLI_CPU_KERNELS", "1")
    assert cpu.enable(CPU, encoder, decoder, compiled=True)
    assert encoder.kernels is not None and decoder.kernels is None  # a compiled step keeps the textbook form
    cpu.disable(encoder, decoder)
    assert encoder.kernels is None and decoder.kernels is None


@pytest.fixture
def fresh_checks():
    """The self-checks run again (they run once a process), and are forgotten after the test."""
    selfcheck.encoder_problem.cache_clear()
    selfcheck.decoder_problem.cache_clear()
    yield
    selfcheck.encoder_problem.cache_clear()
    selfcheck.decoder_problem.cache_clear()


def test_the_kernels_pass_their_self_check_here_without_touching_the_callers_random_numbers(fresh_checks):
    torch.manual_seed(5)
    expected = torch.rand(4)
    torch.manual_seed(5)
    assert cpu.status() == {"encoder": "on", "decoder": "on"}
    assert torch.equal(torch.rand(4), expected)


def test_a_product_form_that_disagrees_with_the_textbook_keeps_the_decoder_kernels_off(
        fresh_checks, monkeypatch, caplog):
    """A torch whose operators changed meaning: the self-check sees other attention weights."""
    right = cpu_attention.product_form

    def wrong(attention, state, *args):
        context, alpha = right(attention, state, *args)
        return context, alpha.flip(-1)

    monkeypatch.setattr(cpu_attention, "product_form", wrong)
    encoder, decoder = _model()
    with caplog.at_level(logging.DEBUG, logger="capcli.model.cpu"):
        assert cpu.enable(CPU, encoder, decoder)
    assert decoder.kernels is None and encoder.kernels is not None
    lines = [r.message for r in caplog.records if r.name == "capcli.model.cpu"]
    assert len(lines) == 1 and "attention and cell" in lines[0], lines
    assert cpu.status()["decoder"].startswith("off (attention and cell: AssertionError")


def test_a_fused_encoder_that_fails_or_disagrees_stays_off(fresh_checks, monkeypatch):
    right = cpu_encoder._run
    monkeypatch.setattr(cpu_encoder, "_run", lambda *args: right(*args) * 1.01)
    encoder, decoder = _model()
    assert cpu.enable(CPU, encoder, decoder)
    assert encoder.kernels is None and decoder.kernels is not None
    assert cpu.status()["encoder"].startswith("off (fused encoder: AssertionError")
    selfcheck.encoder_problem.cache_clear()
    monkeypatch.setattr(cpu_encoder, "fused_convolution", lambda: None)  # a torch without the operator
    assert cpu.status()["encoder"] == "off (this torch has no oneDNN fused convolution)"
