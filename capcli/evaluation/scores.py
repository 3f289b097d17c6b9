"""Caption metrics on tokenised captions: BLEU-1..4, CIDEr-D and ROUGE-L, the numbers the COCO caption
evaluation code (pycocoevalcap's ``Bleu(4)``, ``Cider`` and ``Rouge``) gives on the same captions.

Every function takes ``references`` (per image, a list of reference token lists) and
``hypotheses`` (per image, one token list), in the same order. The COCO code takes each caption as
its tokens joined by single spaces and splits it again, so these functions see the same words;
its quirks are kept on purpose, so that scores compare with published ones (each is named where
it matters). ``tests/test_scores_coco.py`` checks the equality on a few hundred random corpora.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence

Tokens = Sequence[str]
# the COCO BLEU's stand-ins that keep a zero count from giving log(0) or a division by zero: a
# precision is (matches + TINY) / (n-grams + SMALL), so a missing order makes BLEU tiny, not 0
_TINY, _SMALL = 1e-15, 1e-9


def ngrams(tokens: Tokens, n_max: int) -> Counter:
    """Counts of every 1..``n_max``-gram of ``tokens``, as tuples."""
    counts: Counter = Counter()
    for n in range(1, n_max + 1):
        for i in range(len(tokens) - n + 1):
            counts[tuple(tokens[i:i + n])] += 1
    return counts


def bleu(references: Sequence[Sequence[Tokens]], hypotheses: Sequence[Tokens], n_max: int = 4) -> list[float]:
    """Corpus BLEU-1..``n_max`` as the COCO caption evaluation computes it.

    Clipped n-gram matches (against each n-gram's largest count in any one reference) and
    hypothesis n-grams are summed over the corpus; BLEU-n is the geometric mean of the precisions
    (matches + 1e-15) / (n-grams + 1e-9) of orders 1..n, times the brevity penalty
    exp(1 − r / c) when c < r, where c is the total hypothesis length and r the sum over images of
    the reference length closest to the hypothesis's (the shorter one on a tie).

    Returns:
        ``[BLEU-1, ..., BLEU-n_max]``; zeros for an empty corpus.
    """
    if not hypotheses:
        return [0.0] * n_max
    correct, guesses = [0] * n_max, [0] * n_max
    hyp_length = ref_length = 0
    for refs, hyp in zip(references, hypotheses, strict=True):
        most: dict[tuple, int] = {}
        for ref in refs:
            for gram, count in ngrams(ref, n_max).items():
                most[gram] = max(most.get(gram, 0), count)
        for gram, count in ngrams(hyp, n_max).items():
            correct[len(gram) - 1] += min(count, most.get(gram, 0))
        for n in range(n_max):
            guesses[n] += max(0, len(hyp) - n)
        hyp_length += len(hyp)
        ref_length += min(((abs(len(r) - len(hyp)), len(r)) for r in refs), default=(0, 0))[1]
    ratio = (hyp_length + _TINY) / (ref_length + _SMALL)
    brevity = math.exp(1 - 1 / ratio) if ratio < 1 else 1.0
    scores, product = [], 1.0
    for n in range(n_max):
        product *= (correct[n] + _TINY) / (guesses[n] + _SMALL)
        scores.append(product ** (1 / (n + 1)) * brevity)
    return scores


def corpus_bleu(references: Sequence[Sequence[Tokens]], hypotheses: Sequence[Tokens], n: int = 4) -> float:
    """Corpus BLEU-n (see :func:`bleu`)."""
    return bleu(references, hypotheses, n)[n - 1]


def cider_d(references: Sequence[Sequence[Tokens]], hypotheses: Sequence[Tokens], n_max: int = 4,
            sigma: float = 6.0, document_frequency: Counter | None = None,
            log_images: float | None = None) -> tuple[float, list[float]]:
    """CIDEr-D: the corpus score (mean over images) and the score of each image.

    As in the COCO caption evaluation code (CIDEr-D: pycocoevalcap's ``Cider``): tf-idf vectors of 1..4-grams
    with raw term counts and idf = log(number of images) − log(max(1, document frequency)), where
    the document frequency of an n-gram is the number of images whose reference set contains it;
    for each reference, per n the clipped dot product min(hyp, ref) · ref over the two norms, times
    a Gaussian penalty exp(−δ² / 2σ²) on the length difference δ (lengths counted as that code
    does: the number of bigrams); the mean over n, averaged over references, × 10.

    ``document_frequency`` and ``log_images`` can come from another corpus (the RL reward uses
    the training references); by default they are the evaluated references'.
    """
    if not hypotheses:
        return 0.0, []
    ref_counts = [[ngrams(r, n_max) for r in refs] for refs in references]
    if document_frequency is None:
        document_frequency = Counter()
        for refs in ref_counts:
            document_frequency.update(set().union(*refs) if refs else set())
        log_images = math.log(float(len(references)))

    def vector(counts: Counter) -> tuple[list[dict], list[float], int]:
        vec: list[dict] = [{} for _ in range(n_max)]
        norm = [0.0] * n_max
        length = 0
        for gram, tf in counts.items():
            n = len(gram) - 1
            value = tf * (log_images - math.log(max(1.0, document_frequency[gram])))
            vec[n][gram] = value
            norm[n] += value * value
            if n == 1:
                length += tf
        return vec, [math.sqrt(x) for x in norm], length

    scores = []
    for hyp, refs in zip(hypotheses, ref_counts, strict=True):
        vec_h, norm_h, len_h = vector(ngrams(hyp, n_max))
        total = [0.0] * n_max
        for ref in refs:
            vec_r, norm_r, len_r = vector(ref)
            penalty = math.exp(-((len_h - len_r) ** 2) / (2 * sigma ** 2))
            for n in range(n_max):
                value = sum(min(v, vec_r[n].get(g, 0.0)) * vec_r[n].get(g, 0.0) for g, v in vec_h[n].items())
                if norm_h[n] != 0 and norm_r[n] != 0:
                    value /= norm_h[n] * norm_r[n]
                total[n] += value * penalty
        scores.append(10.0 * (sum(total) / n_max) / max(len(refs), 1))
    return sum(scores) / len(scores), scores


def _lcs(a: Tokens, b: Tokens) -> int:
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0]
        for j, y in enumerate(b):
            current.append(previous[j] + 1 if x == y else max(previous[j + 1], current[j]))
        previous = current
    return previous[-1]


def rouge_l(references: Sequence[Sequence[Tokens]], hypotheses: Sequence[Tokens],
            beta: float = 1.2) -> tuple[float, list[float]]:
    """ROUGE-L (COCO caption evaluation): per image, the LCS-based F-measure with β = 1.2 from the
    best precision and best recall over the references; the corpus score is the mean.

    The COCO code splits captions on single spaces, so an empty caption is one empty word there
    (it matches an empty reference); so it is here.
    """
    scores = []
    for hyp, refs in zip(hypotheses, references, strict=True):
        hyp = list(hyp) or [""]
        precisions, recalls = [], []
        for ref in refs:
            ref = list(ref) or [""]
            lcs = _lcs(hyp, ref)
            precisions.append(lcs / len(hyp))
            recalls.append(lcs / len(ref))
        p, r = max(precisions, default=0.0), max(recalls, default=0.0)
        scores.append(((1 + beta ** 2) * p * r) / (r + beta ** 2 * p) if p > 0 and r > 0 else 0.0)
    return (sum(scores) / len(scores) if scores else 0.0), scores


METRIC_KEYS = {"bleu": ("bleu1", "bleu2", "bleu3", "bleu4"), "meteor": ("meteor",), "rouge": ("rouge_l",),
               "cider": ("cider_d",), "spice": ("spice",)}  # capcli evaluate --metrics name → score keys
PYTHON_METRICS = ("bleu", "rouge", "cider")  # computed here; METEOR and SPICE need Java (evaluation.java_metrics)


def all_scores(references: Sequence[Sequence[Tokens]], hypotheses: Sequence[Tokens],
               metrics: Sequence[str] = PYTHON_METRICS) -> dict[str, float]:
    """BLEU-1..4, CIDEr-D and ROUGE-L of a corpus (those of ``metrics`` asked for), as a dict."""
    result: dict[str, float] = {}
    if "bleu" in metrics:
        result.update(zip(METRIC_KEYS["bleu"], bleu(references, hypotheses, 4)))
    if "cider" in metrics:
        result["cider_d"] = cider_d(references, hypotheses)[0]
    if "rouge" in metrics:
        result["rouge_l"] = rouge_l(references, hypotheses)[0]
    return result
