"""Disputed ratings: thumbs that a classifier trained on the OTHER ratings confidently contradicts.

People misclick, skim and disagree, and a flipped thumb does the most harm in filtered SFT: a thumbs-up
on a bad answer makes it a target. Each rated answer is scored by a text classifier (which word 1-2-grams
occur, logistic regression) fitted on the other folds of the ratings, so no answer vouches for itself.
Its probabilities rank well but are not calibrated, so each label is judged against its own threshold, the
rule of confident learning (Northcutt et al., 2021): a label is confidently predicted for an answer when
the answer's probability of it reaches the average over the answers that carry it; an answer is disputed
when the likelier of its confidently predicted labels is not the one it was given. Too few ratings of
either kind to cross-validate: nothing is disputed. (The ratings judge, eval/judge.py, is a tf-idf model
tuned to compare two answers; as a detector of flipped labels in small sets, word presence with weaker
regularisation caught more of them.)

    flags = disputed(["TL;DR: ...", "blah", ...], [True, False, ...])
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

FOLDS = 5


def answer_classifier() -> Any:
    """P(rated good | answer text): which word 1-2-grams occur, balanced logistic regression."""
    from sklearn.feature_extraction.text import CountVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    return make_pipeline(
        CountVectorizer(ngram_range=(1, 2), binary=True, lowercase=True),
        LogisticRegression(class_weight="balanced", C=10.0, max_iter=2000),
    )


def disputed(texts: Sequence[str], labels: Sequence[bool], *, seed: int = 0) -> list[bool]:
    """For each rated answer, whether the other ratings contradict its label (see the module docstring)."""
    if len(texts) != len(labels):
        raise ValueError(f"{len(texts)} texts but {len(labels)} labels")
    good = sum(bool(label) for label in labels)
    folds = min(FOLDS, good, len(labels) - good)
    if folds < 2:
        return [False] * len(labels)
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    y = [int(bool(label)) for label in labels]
    split = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    # plain Python floats from here: the flags and their count go into JSON
    p_good = cross_val_predict(answer_classifier(), list(texts), y, cv=split, method="predict_proba")[:, 1].tolist()
    # each label's threshold: the classifier's average probability of it over the answers that carry it
    threshold = {
        0: sum(1 - p for p, label in zip(p_good, y, strict=True) if label == 0) / (len(y) - good),
        1: sum(p for p, label in zip(p_good, y, strict=True) if label == 1) / good,
    }
    flags = []
    for label, p in zip(y, p_good, strict=True):
        probability = {0: 1 - p, 1: p}
        confident = [c for c in (0, 1) if probability[c] >= threshold[c]]
        flags.append(bool(confident) and max(confident, key=probability.get) != label)
    return flags
