"""``<unk>`` is never generated: beam search, greedy decoding, the captioning service and the A2C
sampler, with a model whose ``<unk>`` logit is forced far above every other."""

import math
from types import SimpleNamespace

import pytest
import torch

from capcli.inference.captioning import Captioner
from capcli.model.decoder import AttentionDecoder, PlainDecoder
from capcli.model.decoding import banned_words, beam_search, greedy
from capcli.training.a2c import A2CTrainer

WORDS = ["a", "red", "circle", "blue", "square"]
WORD_MAP = {"<pad>": 0, **{w: i + 1 for i, w in enumerate(WORDS)}, "<unk>": 6, "<start>": 7, "<end>": 8}
UNK, START, END = WORD_MAP["<unk>"], WORD_MAP["<start>"], WORD_MAP["<end>"]


def _unk_loving(kind: str):
    torch.manual_seed(0)
    cls = AttentionDecoder if kind == "attention" else PlainDecoder
    decoder = cls(vocab_size=len(WORD_MAP), encoder_dim=8, embed_dim=6, attention_dim=5, decoder_dim=12, dropout=0.0)
    with torch.no_grad():
        decoder.fc.bias[UNK] = 1e4  # <unk> is the most likely word at every step, by far
    return decoder.eval(), torch.randn(5, 3, 3, 8)


def test_banned_words_are_pad_start_and_unk():
    assert set(banned_words(WORD_MAP)) == {0, UNK, START}
    assert Captioner(None, None, WORD_MAP, 32, 10, None, None, "", None).banned == banned_words(WORD_MAP)


@pytest.mark.parametrize("kind", ["attention", "plain"])
def test_decoding_never_emits_unk(kind):
    decoder, features = _unk_loving(kind)
    unbanned = greedy(decoder, features, START, END, 6, banned=(0, START))
    assert all(d.tokens and set(d.tokens) == {UNK} for d in unbanned)  # the model really prefers it
    for k in (1, 3):
        for decoded in beam_search(decoder, features, START, END, 6, k, banned=banned_words(WORD_MAP)):
            assert UNK not in decoded.tokens and math.isfinite(decoded.score)
            assert decoded.tokens or decoded.finished


def test_a2c_sampler_never_samples_unk():
    decoder, features = _unk_loving("attention")
    trainer = A2CTrainer.__new__(A2CTrainer)  # only what rollout reads
    trainer.word_map, trainer.decoder, trainer.device, trainer.max_len = WORD_MAP, decoder, torch.device("cpu"), 8
    trainer.config = SimpleNamespace(temperature=1.0)
    torch.manual_seed(1)
    for _ in range(5):
        tokens, lengths, logp, _, _ = trainer.rollout(features)
        assert not (tokens == UNK).any() and torch.isfinite(logp).all()
