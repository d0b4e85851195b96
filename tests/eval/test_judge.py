"""The ratings judge learns what users liked from the store, and nothing else."""

from __future__ import annotations

import random

import pytest

from eval.judge import JudgeUnavailable, RatingsJudge
from feedback.models import Completion
from feedback.store import FeedbackStore
from retrain.demo import corpus


def _log(store: FeedbackStore, n: int, seed: int, liked_style: str) -> None:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        topic = rng.choice(corpus.TOPICS)
        style = rng.choice(corpus.STYLES)
        rows.append(
            Completion(
                id=f"chatcmpl-{seed}-{i}",
                model="current",
                adapter="base",
                base_model="demo",
                messages=[{"role": "user", "content": rng.choice(corpus.prompts(topic))}],
                choices=[{"index": 0, "text": corpus.canonical_answer(topic, style), "finish_reason": "stop"}],
            )
        )
    store.record_completions(rows)
    for row in rows:
        style = corpus.classify_style(row.choices[0]["text"])
        store.rate(row.id, 0, rating=1 if style == liked_style else -1, user=f"u{hash(row.id) % 7}")


def test_judge_learns_the_users_preference_from_ratings(db_url):
    with FeedbackStore(db_url) as store:
        _log(store, 80, seed=1, liked_style="tldr")
        judge = RatingsJudge.fit(store.engine)
    wins = 0
    topics = corpus.TOPICS
    for topic in topics:  # fresh pairs: tldr vs every other style
        for style in ("plain", "bullets", "friendly", "formal"):
            wins += judge.compare("q", corpus.canonical_answer(topic, "tldr"), corpus.canonical_answer(topic, style))
    assert wins / (len(topics) * 4) > 0.9
    assert judge.describe()["examples"] >= 40


def test_judge_follows_the_ratings_not_a_fixed_answer(db_url):
    with FeedbackStore(db_url) as store:
        _log(store, 80, seed=2, liked_style="formal")
        judge = RatingsJudge.fit(store.engine)
    topic = corpus.TOPICS[3]
    assert judge.compare("q", corpus.canonical_answer(topic, "formal"), corpus.canonical_answer(topic, "tldr")) == 1.0


def test_judge_refuses_one_sided_data(db_url):
    with FeedbackStore(db_url) as store:
        _log(store, 20, seed=3, liked_style="nothing")  # everything rated down
        with pytest.raises(JudgeUnavailable, match="both kinds"):
            RatingsJudge.fit(store.engine)
