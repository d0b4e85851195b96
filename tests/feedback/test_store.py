"""FeedbackStore on real SQLite and Postgres: upserts, validation, stats, state, API keys, and two writer
processes at once (multiprocessing, spawn)."""

from __future__ import annotations

import multiprocessing
import re

import pytest
from sqlalchemy import func, select

from feedback.models import ApiKey, Comparison, Completion, Example, Rating
from feedback.store import FeedbackStore, InvalidFeedback, UnknownApiKey, UnknownCompletion

from helpers import stored_completion


def count(store: FeedbackStore, model: type) -> int:
    with store.session() as session:
        return session.scalar(select(func.count()).select_from(model))


# -- completions ----------------------------------------------------------------------------------
def test_record_completions_is_bulk_and_skips_stored_ids(store: FeedbackStore) -> None:
    rows = [stored_completion() for _ in range(5)]
    assert store.record_completions(rows[:3]) == 3
    assert store.record_completions(rows) == 2  # a retried batch does not fail on its earlier success
    assert count(store, Completion) == 5
    got = store.get_completion(rows[0].id)
    assert got is not None and got.choices == rows[0].choices
    assert store.get_completion("chatcmpl-missing") is None


# -- ratings --------------------------------------------------------------------------------------
def test_rate_creates_then_the_same_user_updates_the_same_row(store: FeedbackStore) -> None:
    c = stored_completion(choices=2)
    store.record_completions([c])
    first, created = store.rate(c.id, 0, rating=1, comment="nice", user="ann")
    assert created and first.id.startswith("fb-") and first.rating == 1
    again, created = store.rate(c.id, 0, score=2, correction="better", user="ann")
    assert not created and again.id == first.id
    # A re-rating replaces the whole judgement.
    assert (again.rating, again.score, again.comment, again.correction) == (None, 2, None, "better")
    assert again.created == first.created and again.updated >= first.updated
    # Another choice, another user and anonymous are rows of their own.
    assert store.rate(c.id, 1, rating=-1, user="ann")[1]
    assert store.rate(c.id, 0, rating=-1, user="bob")[1]
    assert store.rate(c.id, 0, rating=-1)[1]
    assert store.rate(c.id, 0, rating=1, user=None)[1] is False  # None is the anonymous user ""
    assert count(store, Rating) == 4


BAD_RATINGS = [
    ({}, "exactly one"),
    ({"rating": 1, "score": 3}, "exactly one"),
    ({"rating": 2}, "rating must be 1"),
    ({"rating": True}, "rating must be 1"),
    ({"rating": 1.0}, "rating must be 1"),
    ({"score": 0}, "score must be"),
    ({"score": 6}, "score must be"),
    ({"score": 2.5}, "score must be"),
    ({"rating": 1, "choice_index": 1}, "out of range"),
    ({"rating": 1, "choice_index": -1}, "out of range"),
    ({"rating": 1, "choice_index": "0"}, "choice_index must be an integer"),
    ({"rating": 1, "user": "u" * 257}, "at most 256"),
    ({"rating": 1, "comment": 5}, "comment must be a string"),
]


def test_rate_rejects_bad_feedback_and_unknown_ids(store: FeedbackStore) -> None:
    # One database for all cases: a fresh Postgres database per case would cost more than the checks.
    c = stored_completion()
    store.record_completions([c])
    for case, message in BAD_RATINGS:
        kwargs = dict(case)
        choice_index = kwargs.pop("choice_index", 0)
        with pytest.raises(InvalidFeedback, match=message):
            store.rate(c.id, choice_index, **kwargs)
    with pytest.raises(UnknownCompletion, match="chatcmpl-nope") as error:
        store.rate("chatcmpl-nope", 0, rating=1)
    assert error.value.completion_id == "chatcmpl-nope"
    assert count(store, Rating) == 0


# -- comparisons ----------------------------------------------------------------------------------
def test_compare_stores_the_pair_sorted_and_upserts_per_user(store: FeedbackStore) -> None:
    a, b = stored_completion(cid="chatcmpl-a"), stored_completion(cid="chatcmpl-b")
    store.record_completions([a, b])
    first, created = store.compare((b.id, a.id), winner=b.id, user="ann")
    assert created and first.id.startswith("cmp-")
    assert (first.completion_a, first.completion_b, first.winner) == (a.id, b.id, b.id)
    again, created = store.compare([a.id, b.id], winner="tie", user="ann")
    assert not created and again.id == first.id and again.winner == "tie"
    assert store.compare([a.id, b.id], winner=a.id, user="bob")[1]
    assert count(store, Comparison) == 2


BAD_COMPARISONS = [
    (["chatcmpl-a", "chatcmpl-a"], "tie", InvalidFeedback, "two different"),
    (["chatcmpl-a"], "tie", InvalidFeedback, "exactly two"),
    ("chatcmpl-a", "tie", InvalidFeedback, "exactly two"),
    (["chatcmpl-a", "chatcmpl-b"], "chatcmpl-c", InvalidFeedback, "winner must be"),
    (["chatcmpl-a", "chatcmpl-zz"], "tie", UnknownCompletion, "chatcmpl-zz"),
]


def test_compare_rejects_bad_input(store: FeedbackStore) -> None:
    store.record_completions([stored_completion(cid="chatcmpl-a"), stored_completion(cid="chatcmpl-b")])
    for ids, winner, error, message in BAD_COMPARISONS:
        with pytest.raises(error, match=message):
            store.compare(ids, winner)
    assert count(store, Comparison) == 0


# -- stats ----------------------------------------------------------------------------------------
def test_stats_has_the_design_shape_and_exact_counts(store: FeedbackStore) -> None:
    assert store.stats() == {
        "completions": 0,
        "ratings": {"total": 0, "up": 0, "down": 0, "scores": 0},
        "comparisons": 0,
        "examples": {"sft": 0, "dpo": 0},
        "users": 0,
    }
    c1, c2, c3 = stored_completion(user="ann"), stored_completion(user=""), stored_completion(choices=2)
    store.record_completions([c1, c2, c3])
    store.rate(c1.id, 0, rating=1, user="bob")
    store.rate(c2.id, 0, rating=-1, user="ann")
    store.rate(c3.id, 0, rating=-1)
    store.rate(c3.id, 1, score=4, user="cid")
    store.compare([c1.id, c2.id], "tie", user="dee")
    with store.session() as session:
        session.add(Example(kind="sft", data={"messages": []}, content_hash="h1"))
        session.add(Example(kind="sft", data={"messages": []}, content_hash="h2"))
        session.add(Example(kind="dpo", data={}, content_hash="h3"))
    assert store.stats() == {
        "completions": 3,
        "ratings": {"total": 4, "up": 1, "down": 2, "scores": 1},
        "comparisons": 1,
        "examples": {"sft": 2, "dpo": 1},
        "users": 4,  # ann, bob, cid, dee; anonymous ("" and None) is nobody
    }


# -- serving state --------------------------------------------------------------------------------
def test_serving_state_round_trips(store: FeedbackStore) -> None:
    assert store.get_state("current") is None
    store.set_state("current", {"adapter": "ft-0001"})
    store.set_state("current", {"adapter": "ft-0002", "since": 1.5})
    assert store.get_state("current") == {"adapter": "ft-0002", "since": 1.5}
    store.set_state("current", None)
    assert store.get_state("current") is None


# -- API keys -------------------------------------------------------------------------------------
def test_api_keys_are_stored_hashed_and_can_be_revoked(store: FeedbackStore) -> None:
    key_id, key = store.add_api_key("laptop")
    assert re.fullmatch(r"rk-[A-Za-z0-9_-]{32,}", key)
    assert store.verify_api_key(key).id == key_id
    assert store.verify_api_key(key + "x") is None
    (listed,) = store.list_api_keys()
    assert listed.name == "laptop" and key not in (listed.key_hash, listed.prefix) and key.startswith(listed.prefix)
    revoked = store.revoke_api_key(listed.prefix)
    assert revoked.id == key_id and revoked.revoked is not None
    assert store.revoke_api_key(key_id).revoked == revoked.revoked  # idempotent
    assert store.verify_api_key(key) is None
    with pytest.raises(UnknownApiKey):
        store.revoke_api_key("key-nope")
    # Seeding (RATCHET_API_KEYS) is idempotent and keeps revocations.
    assert store.seed_api_keys(["alpha-secret-1", " beta-secret-2 ", "alpha-secret-1", ""]) == 2
    assert store.seed_api_keys(["alpha-secret-1", "beta-secret-2"]) == 0
    assert store.verify_api_key("beta-secret-2") is not None
    alpha = store.verify_api_key("alpha-secret-1")
    store.revoke_api_key(alpha.id)
    store.seed_api_keys(["alpha-secret-1"])
    assert store.verify_api_key("alpha-secret-1") is None
    assert count(store, ApiKey) == 3


# -- two processes at once ------------------------------------------------------------------------
def _writer_process(url: str, tag: str, shared: list[str], n: int, start, results) -> None:
    """Child: 1) the same user's first rating of every shared completion, racing the other child;
    2) n completions of its own, each rated once, one commit per call."""
    store = FeedbackStore(url)
    start.wait()
    raced = sum(store.rate(cid, 0, rating=1, user="racer")[1] for cid in shared)
    created = 0
    for i in range(n):
        c = stored_completion(cid=f"chatcmpl-{tag}-{i}", user=tag)
        store.record_completions([c])
        created += store.rate(c.id, 0, rating=1 if i % 2 else -1, user=tag)[1]
    store.close()
    results.put((raced, created))


def test_two_writer_processes_lose_nothing_and_race_to_one_row(store: FeedbackStore, db_url: str) -> None:
    n, shared = 100, [stored_completion() for _ in range(50)]  # 200 own rows (completion + rating) per process
    store.record_completions(shared)
    ids = [c.id for c in shared]
    context = multiprocessing.get_context("spawn")
    start, results = context.Event(), context.Queue()
    children = [
        context.Process(target=_writer_process, args=(db_url, f"p{i}", order, n, start, results))
        for i, order in enumerate((ids, ids[::-1]))
    ]
    for child in children:
        child.start()
    start.set()
    (raced_0, created_0), (raced_1, created_1) = (results.get(timeout=120) for _ in children)
    for child in children:
        child.join(timeout=30)
        assert child.exitcode == 0
    # Same-key first ratings: each key was created by exactly one child, and exists once.
    assert raced_0 + raced_1 == len(ids)
    # Own writes: exact counts, nothing lost.
    assert created_0 == created_1 == n
    assert count(store, Completion) == len(ids) + 2 * n
    assert count(store, Rating) == len(ids) + 2 * n
    assert store.stats()["ratings"] == {"total": len(ids) + 2 * n, "up": len(ids) + n, "down": n, "scores": 0}
