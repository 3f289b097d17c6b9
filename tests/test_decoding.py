"""Batched beam search against a plain one-image reference, and greedy decoding."""

from dataclasses import replace

import pytest
import torch

from capcli.model import cpu
from capcli.model.decoder import AttentionDecoder, PlainDecoder
from capcli.model.decoding import beam_search, greedy

PAD, START, END, VOCAB = 0, 1, 2, 14
BANNED = (PAD, START)


def _model(kind: str, seed: int, no_end: bool = False, steps: int = 25):
    """A small decoder trained briefly to end captions at different lengths per image, so the
    cases include finished captions of several lengths (or, with ``no_end``, none at all)."""
    torch.manual_seed(seed)
    cls = AttentionDecoder if kind == "attention" else PlainDecoder
    decoder = cls(vocab_size=VOCAB, encoder_dim=8, embed_dim=6, attention_dim=5, decoder_dim=12, dropout=0.0)
    features = torch.randn(6, 3, 3, 8)
    lengths = torch.tensor([2, 3, 4, 5, 6, 7])  # words + <start> + <end>... per image
    captions = torch.zeros(6, 9, dtype=torch.long)
    for i, n in enumerate(lengths.tolist()):
        captions[i, 0] = START
        captions[i, 1:n - 1] = torch.randint(3, VOCAB, (n - 2,))
        captions[i, n - 1] = END
    optimizer = torch.optim.Adam(decoder.parameters(), lr=0.02)
    for _ in range(steps):
        logits, _ = decoder(features, captions, lengths)
        targets = captions[:, 1:logits.shape[1] + 1]
        mask = torch.arange(logits.shape[1]).unsqueeze(0) < (lengths - 1).unsqueeze(1)
        loss = torch.nn.functional.cross_entropy(logits[mask], targets[mask])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    if no_end:
        with torch.no_grad():
            decoder.fc.bias[END] = -1e4  # <end> is never among the best candidates
    return decoder.eval(), features


def _stacked(states):
    """One state holding the rows of several one-row states of the same image."""
    return replace(states[0], h=torch.cat([s.h for s in states]), c=torch.cat([s.c for s in states]),
                   image_of=torch.zeros(len(states), dtype=torch.long))


@torch.no_grad()
def _reference(decoder, features, k, max_len):
    """The textbook algorithm for one image, written independently of the batched code."""
    state = decoder.init_state(features)  # batch of 1
    beams = [([], 0.0, state)]  # (tokens, score, the beam's one-row state)
    finished, room = [], k
    for step in range(max_len):
        words = torch.tensor([b[0][-1] if b[0] else START for b in beams])
        logits, _, new_state = decoder.step(words, _stacked([b[2] for b in beams]))
        logp = torch.log_softmax(logits.float(), dim=1)
        logp[:, list(BANNED)] = float("-inf")
        total = logp + torch.tensor([b[1] for b in beams]).unsqueeze(1)
        order = total.flatten().argsort(descending=True)[:room].tolist()
        candidates = [(float(total.flatten()[o]), o // VOCAB, o % VOCAB) for o in order]
        beams_next = []
        for score, r, w in candidates[:room]:
            tokens = beams[r][0] + [w]
            if w == END:
                finished.append((tokens[:-1], score, True))
            else:
                beams_next.append((tokens, score, new_state.select(torch.tensor([r]))))
        room -= sum(1 for _, _, w in candidates[:room] if w == END)
        if room == 0:
            break
        if step == max_len - 1 and not finished:
            return beams_next[0][0], beams_next[0][1], False
        beams = beams_next
    best = max(finished, key=lambda f: f[1])
    return best


@pytest.mark.parametrize("kind", ["attention", "plain"])
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("kernels", [False, True])
def test_batched_beam_search_equals_one_image_at_a_time(kind, seed, kernels):
    """With the textbook model, and with the CPU kernels switched on."""
    no_end = seed == 2  # one model never finishes a caption: the best open one is returned
    decoder, features = _model(kind, seed, no_end=no_end)
    if kernels:
        assert cpu.enable(torch.device("cpu"), decoder=decoder)
    features = features + 0.3 * torch.randn(features.shape, generator=torch.Generator().manual_seed(seed))
    max_len = 9
    for k in (1, 3, 5, 10):
        batched = beam_search(decoder, features, START, END, max_len, beam_size=k, banned=BANNED)
        assert len(batched) == 6
        unmapped = beam_search(decoder, features, START, END, max_len, beam_size=k, banned=BANNED, attention=False)
        assert [(d.tokens, d.score, d.attention) for d in unmapped] == [(d.tokens, d.score, None) for d in batched]
        if not no_end:  # the cases cover finished captions of different lengths and different images
            assert len({len(d.tokens) for d in batched if d.finished}) > 1
            assert len({tuple(d.tokens) for d in batched}) > 1
        for i, result in enumerate(batched):
            alone = beam_search(decoder, features[i:i + 1], START, END, max_len, beam_size=k, banned=BANNED)[0]
            assert result.tokens == alone.tokens
            assert result.score == pytest.approx(alone.score, abs=1e-5)
            tokens, score, was_finished = _reference(decoder, features[i:i + 1], k, max_len)
            assert result.tokens == tokens, (kind, seed, k, i)
            assert result.score == pytest.approx(score, abs=1e-5)
            assert result.finished == was_finished
            if no_end:
                assert not result.finished and len(result.tokens) == max_len
            assert not set(result.tokens) & {PAD, START, END}
            if kind == "attention":
                assert result.attention.shape == (len(result.tokens), 9)
                assert torch.allclose(result.attention.sum(dim=1), torch.ones(len(result.tokens)), atol=1e-5)
            else:
                assert result.attention is None


def test_beam_one_is_greedy_argmax():
    decoder, features = _model("attention", 4)
    results = greedy(decoder, features, START, END, 10)
    with torch.no_grad():
        for i, result in enumerate(results):
            state = decoder.init_state(features[i:i + 1])
            word, tokens, total = torch.tensor([START]), [], 0.0
            for _ in range(10):
                logits, _, state = decoder.step(word, state)
                logp = torch.log_softmax(logits, dim=1)
                word = logp.argmax(dim=1)
                total += float(logp[0, word])
                if int(word) == END:
                    break
                tokens.append(int(word))
            assert result.tokens == tokens
            assert result.score == pytest.approx(total, abs=1e-5)


def test_length_penalty_prefers_longer_finished_captions():
    decoder, features = _model("attention", 5)
    plain = beam_search(decoder, features, START, END, 12, beam_size=5)
    longer = beam_search(decoder, features, START, END, 12, beam_size=5, length_penalty=1.0)
    assert all(len(b.tokens) >= len(a.tokens) for a, b in zip(plain, longer))
    # summed log-probability is what plain beam search maximises
    assert all(a.score >= b.score - 1e-6 for a, b in zip(plain, longer))
