"""BLEU, CIDEr-D and ROUGE-L against values worked out by hand (the working is in each test)."""

import math

import pytest

from capcli.evaluation.scores import all_scores, cider_d, corpus_bleu, rouge_l


def _w(text):
    return text.split()


def test_bleu_by_hand():
    refs = [[_w("the cat is on the mat")]]
    hyp = [_w("the cat sat on the mat")]
    # clipped matches / hypothesis n-grams: unigrams the×2 cat on mat = 5/6; bigrams "the cat",
    # "on the", "the mat" = 3/5; trigrams "on the mat" = 1/4; 4-grams 0/3. Equal lengths: BP = 1.
    assert corpus_bleu(refs, hyp, 1) == pytest.approx(5 / 6)
    assert corpus_bleu(refs, hyp, 2) == pytest.approx(math.sqrt(5 / 6 * 3 / 5))
    assert corpus_bleu(refs, hyp, 3) == pytest.approx((5 / 6 * 3 / 5 * 1 / 4) ** (1 / 3))
    four = (5 / 6 * 3 / 5 * 1 / 4 * (1e-15 / 3)) ** (1 / 4)  # no 4-gram match: (0 + 1e-15) / 3
    assert corpus_bleu(refs, hyp, 4) == pytest.approx(four) and corpus_bleu(refs, hyp, 4) < 1e-4


def test_bleu_edge_cases():
    # a hypothesis shorter than 4 words: "a cat" vs "a cat sat here": p1 = 2/2, p2 = 1/1, no
    # trigram at all: p3 = (0 + 1e-15) / (0 + 1e-9) = 1e-6 (the COCO code's constants), so
    # BLEU-3 = (1e-6)^(1/3) · BP; brevity penalty exp(1 - 4/2) = e^-1.
    refs, hyp = [[_w("a cat sat here")]], [_w("a cat")]
    assert corpus_bleu(refs, hyp, 1) == pytest.approx(math.exp(-1))
    assert corpus_bleu(refs, hyp, 2) == pytest.approx(math.exp(-1))
    assert corpus_bleu(refs, hyp, 3) == pytest.approx(1e-2 * math.exp(-1))
    assert corpus_bleu(refs, hyp, 4) == pytest.approx(1e-6 ** (2 / 4) * math.exp(-1))
    # no overlap at all: (1e-15 / 3)^1, times BP exp(1 - 6/3)
    assert corpus_bleu([[_w("red circle left of blue square")]], [_w("a green star")], 1) == pytest.approx(
        1e-15 / 3 * math.exp(-1), abs=1e-20)
    # an empty hypothesis: brevity penalty exp(1 - 1/ratio) with ratio ≈ 0 is 0
    assert corpus_bleu([[_w("a b")]], [[]], 1) == 0.0
    # identical caption and reference: every precision 1, BP 1
    same = _w("a small red circle above a big blue star")
    for n in (1, 2, 3, 4):
        assert corpus_bleu([[same]], [same], n) == pytest.approx(1.0)
    # several references: the closest reference length sets BP (5 words = hypothesis length)
    refs = [[_w("one two three four five six seven"), _w("a b c d e")]]
    assert corpus_bleu(refs, [_w("a b c d e")], 4) == pytest.approx(1.0)


def test_cider_d_by_hand():
    # Two images, so idf = log(2) - log(max(1, df)) = log 2 for every n-gram seen in one image.
    refs = [[_w("a b")], [_w("c d")]]
    # Image 1, hypothesis = reference: per n the cosine is 1 for n = 1, 2 and 0 for n = 3, 4
    # (no trigrams); lengths equal so no penalty: 10 × (1 + 1 + 0 + 0) / 4 = 5.
    # Image 2, "c e" vs "c d": unigrams c, e (both idf log 2) vs c, d: dot log²2 over norms
    # √2·log2 × √2·log2 = 1/2; bigram "c e" ≠ "c d": 0. 10 × (0.5 / 4) = 1.25.
    corpus, per_image = cider_d(refs, [_w("a b"), _w("c e")])
    assert per_image == pytest.approx([5.0, 1.25])
    assert corpus == pytest.approx(3.125)


def test_cider_d_length_penalty_and_edges():
    refs = [[_w("a b")], [_w("c d")]]
    # "a b q r" vs "a b": unigrams 2·log²2 / (2·log2 × √2·log2) = 1/√2; bigrams ab, bq, qr vs ab:
    # log²2 / (√3·log2 × log2) = 1/√3; no tri/4-grams in the reference: 0. Lengths (as the COCO
    # code counts them: bigrams) 3 vs 1: penalty exp(-2² / (2·6²)).
    _, per_image = cider_d(refs, [_w("a b q r"), _w("c d")])
    expected = 10 * (1 / math.sqrt(2) + 1 / math.sqrt(3)) / 4 * math.exp(-4 / 72)
    assert per_image[0] == pytest.approx(expected)
    # no overlap: 0; one image only: every idf is log 1 - log 1 = 0, so 0 even when identical
    assert cider_d(refs, [_w("x y"), _w("z")])[0] == 0.0
    assert cider_d([[_w("a b c")]], [_w("a b c")])[0] == 0.0
    # several references: the mean over them
    refs2 = [[_w("a b"), _w("x y")], [_w("c d")]]
    _, two = cider_d(refs2, [_w("a b"), _w("c d")])
    assert two[0] == pytest.approx(two[1] / 2, rel=0.2)  # matches one of two references only


def test_rouge_l_by_hand():
    # "a b c d" vs "a x c d y": LCS "a c d" = 3, P = 3/4, R = 3/5,
    # F = (1 + 1.2²)·P·R / (R + 1.2²·P) = 2.44 × 0.45 / 1.68
    corpus, per_image = rouge_l([[_w("a x c d y")]], [_w("a b c d")])
    assert per_image[0] == pytest.approx(2.44 * 0.45 / 1.68)
    # the best precision and the best recall over the references are combined: "a b" gives
    # P = 2/4, R = 2/2; "a b c d e f" gives P = 4/4, R = 4/6; so P = 1, R = 1 and F = 1
    _, two = rouge_l([[_w("a b"), _w("a b c d e f")]], [_w("a b c d")])
    assert two[0] == pytest.approx(1.0)
    assert rouge_l([[_w("a b")]], [_w("c d")])[0] == 0.0
    assert rouge_l([[_w("a b")]], [[]])[0] == 0.0


def test_all_scores_keys():
    scores = all_scores([[_w("a b c d e")], [_w("f g h i")]], [_w("a b c d e"), _w("f g h i")])
    assert set(scores) == {"bleu1", "bleu2", "bleu3", "bleu4", "cider_d", "rouge_l"}
    assert scores["bleu4"] == pytest.approx(1.0) and scores["rouge_l"] == pytest.approx(1.0)
    assert scores["cider_d"] == pytest.approx(10 * 4 / 4)  # every n has a match: cosine 1 for n = 1..4
