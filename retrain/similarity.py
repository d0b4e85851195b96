"""The text_similarity grader's metrics, each in [0, 1], from maintained libraries.

fuzzy_match: rapidfuzz's normalised Indel similarity (`fuzz.ratio` / 100). bleu: NLTK's sentence BLEU
(up to 4-grams, smoothing method 1 so that a short answer with no 4-gram match is not a flat 0).
gleu: NLTK's sentence GLEU. rouge_1 ... rouge_5 and rouge_l: the F-measure of Google's rouge-score
(stemming on). Words are split on whitespace, case kept, as the references are written.
"""

from __future__ import annotations

import functools

UNSUPPORTED = {
    "cosine": "cosine similarity needs an embeddings model, which ratchet does not serve: use fuzzy_match, "
    "bleu, gleu or rouge_*",
    "meteor": "meteor needs NLTK's WordNet data, which an offline install does not have: use fuzzy_match, "
    "bleu, gleu or rouge_*",
}
ROUGE = {"rouge_1": "rouge1", "rouge_2": "rouge2", "rouge_3": "rouge3", "rouge_4": "rouge4",
         "rouge_5": "rouge5", "rouge_l": "rougeL"}  # fmt: skip


def score(metric: str, text: str, reference: str) -> float:
    if metric == "fuzzy_match":
        from rapidfuzz import fuzz

        return fuzz.ratio(text, reference) / 100.0
    if metric in ("bleu", "gleu"):
        words, reference_words = text.split(), reference.split()
        if not words or not reference_words:
            return float(words == reference_words)
        if metric == "gleu":
            from nltk.translate.gleu_score import sentence_gleu

            return float(sentence_gleu([reference_words], words))
        from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu

        return float(sentence_bleu([reference_words], words, smoothing_function=SmoothingFunction().method1))
    if metric in ROUGE:
        return float(_rouge(ROUGE[metric]).score(reference, text)[ROUGE[metric]].fmeasure)
    raise ValueError(f"unknown text similarity metric {metric!r}")


@functools.cache
def _rouge(kind: str):
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer([kind], use_stemmer=True)
