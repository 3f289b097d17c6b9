"""Caption metrics on tokenised captions: corpus BLEU-1..4 (NLTK, as training uses), CIDEr-D and
ROUGE-L as the COCO caption evaluation code defines them.

Every function takes ``references`` (per image, a list of reference token lists) and
``hypotheses`` (per image, one token list), in the same order.
"""

from __future__ import annotations

import math
import warnings
from collections import Counter
from collections.abc import Sequence

Tokens = Sequence[str]
BLEU_WEIGHTS = {1: (1.0,), 2: (0.5, 0.5), 3: (1 / 3, 1 / 3, 1 / 3), 4: (0.25, 0.25, 0.25, 0.25)}


def corpus_bleu(references: Sequence[Sequence[Tokens]], hypotheses: Sequence[Tokens], n: int = 4) -> float:
    """Corpus BLEU-n with uniform weights (NLTK's corpus_bleu, no smoothing)."""
    from nltk.translate.bleu_score import corpus_bleu as nltk_corpus_bleu

    if not hypotheses:
        return 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # NLTK warns when no n-gram matches: BLEU is 0 then
        value = float(nltk_corpus_bleu(references, hypotheses, weights=BLEU_WEIGHTS[n]))
    # NLTK stands in the smallest float for a zero precision (giving ~1e-78 and the like): that is 0
    return value if value > 1e-30 else 0.0


def corpus_bleu4(references: Sequence[Sequence[Tokens]], hypotheses: Sequence[Tokens]) -> float:
    return corpus_bleu(references, hypotheses, 4)


def ngrams(tokens: Tokens, n_max: int) -> Counter:
    counts: Counter = Counter()
    for n in range(1, n_max + 1):
        for i in range(len(tokens) - n + 1):
            counts[tuple(tokens[i:i + n])] += 1
    return counts


def cider_d(references: Sequence[Sequence[Tokens]], hypotheses: Sequence[Tokens], n_max: int = 4,
            sigma: float = 6.0, document_frequency: Counter | None = None,
            log_images: float | None = None) -> tuple[float, list[float]]:
    """CIDEr-D: the corpus score (mean over images) and the score of each image.

    As in the COCO caption evaluation code (``ciderD_scorer.py``): tf-idf vectors of 1..4-grams
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
    best precision and best recall over the references; the corpus score is the mean."""
    scores = []
    for hyp, refs in zip(hypotheses, references, strict=True):
        precisions, recalls = [], []
        for ref in refs:
            lcs = _lcs(hyp, ref)
            precisions.append(lcs / len(hyp) if hyp else 0.0)
            recalls.append(lcs / len(ref) if ref else 0.0)
        p, r = max(precisions, default=0.0), max(recalls, default=0.0)
        scores.append(((1 + beta ** 2) * p * r) / (r + beta ** 2 * p) if p > 0 and r > 0 else 0.0)
    return (sum(scores) / len(scores) if scores else 0.0), scores


def all_scores(references: Sequence[Sequence[Tokens]], hypotheses: Sequence[Tokens]) -> dict[str, float]:
    """BLEU-1..4, CIDEr-D and ROUGE-L of a corpus, as a dict."""
    result = {f"bleu{n}": corpus_bleu(references, hypotheses, n) for n in range(1, 5)}
    result["cider_d"] = cider_d(references, hypotheses)[0]
    result["rouge_l"] = rouge_l(references, hypotheses)[0]
    return result
