"""capcli.evaluation.scores against pycocoevalcap's own BLEU, ROUGE-L and CIDEr(-D) scorers (pure Python, the
``test`` extra) on a few hundred random corpora: the same numbers to 1e-6."""

import random

import pytest

from capcli.evaluation.scores import bleu, cider_d, rouge_l

pytest.importorskip("pycocoevalcap")
from pycocoevalcap.bleu.bleu import Bleu  # noqa: E402
from pycocoevalcap.cider.cider import Cider  # noqa: E402
from pycocoevalcap.rouge.rouge import Rouge  # noqa: E402

TOLERANCE = 1e-6


def _caption(rng: random.Random, vocab: list[str], shortest: int = 1) -> list[str]:
    words = rng.choice([vocab[:4], vocab])  # a small vocabulary now and then: many repeated n-grams
    return [rng.choice(words) for _ in range(rng.randint(shortest, 14))]


def _corpus(seed: int) -> tuple[list[list[list[str]]], list[list[str]]]:
    """Random references (1 to 7 per image, 1 to 14 words) and hypotheses (0 to 14 words, some
    copied from a reference, some repeating one word) over a random vocabulary."""
    rng = random.Random(seed)
    vocab = [f"w{i}" for i in range(rng.randint(3, 40))]
    references, hypotheses = [], []
    for _ in range(rng.randint(1, 12)):
        refs = [_caption(rng, vocab) for _ in range(rng.choice([1, 1, 2, 3, 5, 7]))]
        kind = rng.random()
        if kind < 0.1:
            hyp = []  # the empty caption
        elif kind < 0.25:
            hyp = list(rng.choice(refs))
        elif kind < 0.35:
            hyp = [rng.choice(vocab)] * rng.randint(1, 9)
        else:
            hyp = _caption(rng, vocab)
        references.append(refs)
        hypotheses.append(hyp)
    return references, hypotheses


def _coco_inputs(references, hypotheses):
    gts = {i: [" ".join(r) for r in refs] for i, refs in enumerate(references)}
    res = {i: [" ".join(h)] for i, h in enumerate(hypotheses)}
    return gts, res


@pytest.mark.parametrize("block", range(4))
def test_scores_equal_pycocoevalcap(block):
    """100 corpora per block, 400 in all, with empty hypotheses, repeated words, single references
    and single-image corpora (where CIDEr-D's idf is 0) among them."""
    for seed in range(block * 100, (block + 1) * 100):
        references, hypotheses = _corpus(seed)
        gts, res = _coco_inputs(references, hypotheses)
        expected_bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
        assert bleu(references, hypotheses, 4) == pytest.approx(expected_bleu, abs=TOLERANCE), seed
        expected_rouge, expected_rouge_each = Rouge().compute_score(gts, res)
        ours_rouge, ours_rouge_each = rouge_l(references, hypotheses)
        assert ours_rouge == pytest.approx(float(expected_rouge), abs=TOLERANCE), seed
        assert ours_rouge_each == pytest.approx(list(expected_rouge_each), abs=TOLERANCE), seed
        expected_cider, expected_cider_each = Cider().compute_score(gts, res)
        ours_cider, ours_cider_each = cider_d(references, hypotheses)
        assert ours_cider == pytest.approx(float(expected_cider), abs=TOLERANCE), seed
        assert ours_cider_each == pytest.approx(list(expected_cider_each), abs=TOLERANCE), seed


def test_edge_cases_equal_pycocoevalcap():
    """Hand-picked corners: every hypothesis empty, hypotheses shorter than 4 words (no 3- or
    4-grams: the COCO constants make those orders tiny, not 0), a word repeated beyond its count
    in any reference (clipping), ties between reference lengths, an empty reference."""
    corpora = [
        ([[["a", "b"]], [["c"]]], [[], []]),
        ([[["a", "cat", "sat", "here"]], [["a", "dog"]]], [["a", "cat"], ["a"]]),
        ([[["the", "the", "cat"], ["the", "cat", "the", "mat"]], [["x", "y", "z"]]],
         [["the", "the", "the", "the", "the"], ["x", "y"]]),
        ([[["a", "b", "c"], ["a", "b", "c", "d", "e"]], [["q"]]], [["a", "b", "c", "d"], ["q"]]),
        ([[["a", "b"], []], [["c", "d"]]], [[], ["c", "d"]]),
    ]
    for references, hypotheses in corpora:
        gts, res = _coco_inputs(references, hypotheses)
        assert bleu(references, hypotheses) == pytest.approx(Bleu(4).compute_score(gts, res, verbose=0)[0],
                                                             abs=TOLERANCE)
        assert rouge_l(references, hypotheses)[0] == pytest.approx(float(Rouge().compute_score(gts, res)[0]),
                                                                   abs=TOLERANCE)
        assert cider_d(references, hypotheses)[0] == pytest.approx(float(Cider().compute_score(gts, res)[0]),
                                                                   abs=TOLERANCE)
