"""Caption metrics: corpus BLEU (NLTK, as training uses)."""

from __future__ import annotations

from collections.abc import Sequence


def corpus_bleu4(references: Sequence[Sequence[Sequence[str]]], hypotheses: Sequence[Sequence[str]]) -> float:
    """Corpus BLEU-4 of tokenised hypotheses against their reference sets (NLTK's definition)."""
    import warnings

    from nltk.translate.bleu_score import corpus_bleu

    if not hypotheses:
        return 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # NLTK warns when no 4-gram matches: BLEU is 0 then
        return float(corpus_bleu(references, hypotheses))
