"""GroupCommitter on real SQLite and Postgres: judgements that wait together share one commit, each future
resolves only after its commit, and one caller's failure stays its own."""

from __future__ import annotations

import threading

import pytest
from sqlalchemy import func, select, text

from feedback.group_commit import GroupCommitter
from feedback.models import Comparison, Rating
from feedback.store import FeedbackStore, InvalidFeedback, Judgement, UnknownCompletion

from helpers import stored_completion


@pytest.fixture
def committer(store: FeedbackStore):
    committer = GroupCommitter(store, max_batch=64, writers=1)  # hold() occupies the one thread
    yield committer
    committer.close()


def hold(committer: GroupCommitter) -> threading.Event:
    """Keep the committer's thread busy in a transaction of its own until the event is set, so everything
    submitted meanwhile waits together for the next group."""
    release, started = threading.Event(), threading.Event()

    def blocker(_session):
        started.set()
        release.wait(10)

    committer.submit(blocker)
    assert started.wait(10)
    return release


def rate(cid: str, user: str, rating: int = 1) -> Judgement:
    return Judgement(cid, 0, rating=rating, user=user)


def stored(store: FeedbackStore, model: type) -> int:
    with FeedbackStore(store.url) as fresh, fresh.session() as session:  # another connection: what is committed
        return session.scalar(select(func.count()).select_from(model))


def test_judgements_that_wait_together_share_one_commit(store, committer) -> None:
    rows = [stored_completion(adapter="ad-7") for _ in range(30)]
    store.record_completions(rows)
    release = hold(committer)
    futures = [committer.rate(rate(row.id, f"u{i}")) for i, row in enumerate(rows)]
    assert not any(f.done() for f in futures)
    assert stored(store, Rating) == 0  # nothing is acknowledged before its commit
    release.set()
    results = [f.result(10) for f in futures]
    assert committer.commits == 2  # the blocker's own transaction, then all 30 in one
    assert all(created for _, created, _ in results)
    assert {adapter for _, _, adapter in results} == {"ad-7"}
    assert stored(store, Rating) == 30


def test_a_group_is_capped_at_max_batch(store) -> None:
    rows = [stored_completion(adapter="ad-7") for _ in range(10)]
    store.record_completions(rows)
    committer = GroupCommitter(store, max_batch=4, writers=1)
    try:
        release = hold(committer)
        futures = [committer.rate(rate(row.id, "u")) for row in rows]
        release.set()
        assert all(f.result(10)[1] for f in futures)
        assert committer.commits == 1 + 3  # the blocker, then 4 + 4 + 2
    finally:
        committer.close()


def test_re_ratings_in_the_same_group_replace_each_other_in_order(store, committer) -> None:
    rows = [stored_completion(adapter="ad-7"), stored_completion(adapter="ad-7")]
    store.record_completions(rows)
    release = hold(committer)
    ann = [committer.rate(rate(rows[0].id, "ann", value)) for value in (1, -1, 1)]
    bob = committer.rate(Judgement(rows[1].id, 0, score=4, comment="fine", user="bob"))
    release.set()
    answers = [f.result(10) for f in ann]
    assert [created for _, created, _ in answers] == [True, False, False]
    assert len({row.id for row, _, _ in answers}) == 1  # one judgement, replaced twice
    stored_bob = bob.result(10)[0]
    assert (stored_bob.score, stored_bob.comment, stored_bob.user) == (4, "fine", "bob")
    with store.session() as session:
        assert sorted((r.user, r.rating) for r in session.scalars(select(Rating))) == [("ann", 1), ("bob", None)]


def test_a_bad_judgement_fails_alone_and_its_group_commits(store, committer) -> None:
    good = [stored_completion(adapter="ad-7") for _ in range(3)]
    store.record_completions(good)
    release = hold(committer)
    before = committer.rate(rate(good[0].id, "a"))
    unknown = committer.rate(rate("chatcmpl-never-served", "b"))
    invalid = committer.rate(Judgement(good[1].id, 5, rating=1, user="c"))
    pair = committer.submit(lambda session: store.compare_in(session, (good[1].id, good[2].id), good[2].id, "d"))
    release.set()
    assert before.result(10)[1] is True and pair.result(10)[1] is True
    with pytest.raises(UnknownCompletion):
        unknown.result(10)
    with pytest.raises(InvalidFeedback, match="out of range"):
        invalid.result(10)
    assert committer.regrouped == 0  # refused before writing: the group's transaction was never at risk
    assert (stored(store, Rating), stored(store, Comparison)) == (1, 1)


def test_each_rating_of_a_group_names_its_own_adapter_and_refusals_say_why(store, committer) -> None:
    a, b = stored_completion(adapter="ad-a"), stored_completion(adapter="ad-b")
    store.record_completions([a, b])
    release = hold(committer)
    first, second = committer.rate(rate(a.id, "u")), committer.rate(rate(b.id, "u"))
    again = committer.rate(rate(a.id, "u", rating=-1))  # the same key: a later statement of the same group
    negative = committer.rate(Judgement(b.id, -1, rating=1, user="v"))
    unknown = committer.rate(rate("chatcmpl-never-served", "v"))
    release.set()
    assert (first.result(10)[2], second.result(10)[2], again.result(10)[2]) == ("ad-a", "ad-b", "ad-a")
    assert again.result(10)[0].id == first.result(10)[0].id and again.result(10)[1] is False
    with pytest.raises(InvalidFeedback, match=r"choice_index -1 is out of range: completion .* has 1 choice"):
        negative.result(10)
    with pytest.raises(UnknownCompletion, match="chatcmpl-never-served"):
        unknown.result(10)
    assert committer.commits == 2  # the holder's and the group's
    assert stored(store, Rating) == 2


def test_a_database_error_in_a_group_rolls_it_back_and_each_is_written_alone(store, committer) -> None:
    good = [stored_completion(adapter="ad-7") for _ in range(4)]
    store.record_completions(good)
    release = hold(committer)
    futures = [committer.rate(rate(row.id, "u")) for row in good[:2]]
    broken = committer.submit(lambda session: session.execute(text("INSERT INTO no_such_table VALUES (1)")))
    futures += [committer.rate(rate(row.id, "u")) for row in good[2:]]
    release.set()
    assert all(f.result(10)[1] for f in futures)
    with pytest.raises(Exception, match="no_such_table"):
        broken.result(10)
    assert committer.regrouped == 1
    assert stored(store, Rating) == 4  # the broken row's neighbours were committed on their own


@pytest.mark.parametrize("writers", [1, 2])
def test_concurrent_threads_all_get_their_own_committed_answer(store, writers) -> None:
    committer = GroupCommitter(store, max_batch=64, writers=writers)
    rows = [stored_completion(adapter="ad-7") for _ in range(8)]
    store.record_completions(rows)
    answers: list[str] = []

    def rater(t: int) -> None:
        for i in range(25):
            rating, created, _ = committer.rate(rate(rows[t].id, f"t{t}-{i}")).result(30)
            assert created
            answers.append(rating.id)

    threads = [threading.Thread(target=rater, args=(t,)) for t in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    committer.close()
    assert len(set(answers)) == 200 and committer.written == 200
    with store.session() as session:
        assert set(session.scalars(select(Rating.id))) == set(answers)


def test_a_closed_committer_refuses_new_work_and_commits_what_it_holds(store) -> None:
    row = stored_completion(adapter="ad-7")
    store.record_completions([row])
    committer = GroupCommitter(store)
    future = committer.rate(rate(row.id, "last"))
    committer.close()
    assert future.result(1)[1] is True
    with pytest.raises(RuntimeError, match="closed"):
        committer.rate(rate(row.id, "late"))
