"""CompletionLogWriter on real SQLite and Postgres: batching, flush on demand, close, bad rows, and a
database that fails for a while."""

from __future__ import annotations

import time

from sqlalchemy import func, select, text

from feedback.models import Completion
from feedback.store import FeedbackStore
from feedback.writer import CompletionLogWriter

from helpers import stored_completion


def stored(store: FeedbackStore) -> int:
    with store.session() as session:
        return session.scalar(select(func.count()).select_from(Completion))


def test_submits_are_batched_into_few_commits(store: FeedbackStore) -> None:
    with CompletionLogWriter(store, batch_size=50, flush_seconds=60) as writer:
        for _ in range(200):
            writer.submit(stored_completion())
        assert writer.flush(timeout=30)
        assert stored(store) == 200 and writer.rows_written == 200
        # A batch is taken once 50 rows wait (or more, when the thread is behind); flush takes the rest.
        assert 1 <= writer.commits <= 5
        assert writer.pending_ids == set()


def test_a_lone_row_is_written_after_flush_seconds(store: FeedbackStore) -> None:
    with CompletionLogWriter(store, batch_size=1000, flush_seconds=0.05) as writer:
        writer.submit(stored_completion())
        deadline = time.monotonic() + 10
        while writer.pending_ids and time.monotonic() < deadline:
            time.sleep(0.01)
        assert stored(store) == 1 and writer.commits == 1


def test_ensure_committed_makes_a_pending_completion_visible(store: FeedbackStore) -> None:
    with CompletionLogWriter(store, batch_size=1000, flush_seconds=60) as writer:
        c = stored_completion()
        writer.submit(c)
        assert c.id in writer.pending_ids and store.get_completion(c.id) is None
        assert writer.ensure_committed(c.id, timeout=10)
        assert store.get_completion(c.id) is not None
        assert store.rate(c.id, 0, rating=1)[1]  # what the rating route does next
        assert writer.ensure_committed("chatcmpl-never-submitted", timeout=0)


def test_close_flushes_is_idempotent_and_later_submits_write_through(store: FeedbackStore) -> None:
    writer = CompletionLogWriter(store, batch_size=1000, flush_seconds=60)
    for _ in range(10):
        writer.submit(stored_completion())
    assert writer.close() and writer.close()
    assert stored(store) == 10
    writer.submit(stored_completion())  # a request finishing during shutdown is not lost
    assert stored(store) == 11


def test_a_bad_row_is_dropped_alone_and_the_writer_goes_on(store: FeedbackStore) -> None:
    """Decision: a batch the database refuses is retried row by row; only refused rows are dropped."""
    with CompletionLogWriter(store, batch_size=1000, flush_seconds=60) as writer:
        good = [stored_completion() for _ in range(9)]
        null = stored_completion(model=None)  # violates NOT NULL on both databases
        unserializable = stored_completion()
        unserializable.messages = [object()]  # not JSON: fails before the database sees it
        for row in good[:3] + [null] + good[3:6] + [unserializable] + good[6:]:
            writer.submit(row)
        assert writer.flush(timeout=30)
        assert writer.dropped_invalid == 2 and stored(store) == 9
        assert store.get_completion(null.id) is None and store.get_completion(unserializable.id) is None
        writer.submit(stored_completion())
        assert writer.flush(timeout=30) and stored(store) == 10


def test_a_failing_database_keeps_the_rows_until_it_recovers(store: FeedbackStore) -> None:
    # A transient failure both databases can stage: the table is gone for a while.
    with store.engine.begin() as connection:
        connection.execute(text("ALTER TABLE completions RENAME TO completions_away"))
    with CompletionLogWriter(store, batch_size=1000, flush_seconds=60) as writer:
        rows = [stored_completion() for _ in range(3)]
        for row in rows:
            writer.submit(row)
        assert not writer.flush(timeout=0.5)
        assert writer.errors >= 1 and writer.pending_ids == {r.id for r in rows}
        with store.engine.begin() as connection:
            connection.execute(text("ALTER TABLE completions_away RENAME TO completions"))
        assert writer.flush(timeout=30)
        assert stored(store) == 3 and writer.dropped_invalid == 0 and writer.pending_ids == set()


def test_a_full_queue_blocks_then_drops_and_counts(store: FeedbackStore) -> None:
    with store.engine.begin() as connection:
        connection.execute(text("ALTER TABLE completions RENAME TO completions_away"))
    writer = CompletionLogWriter(store, batch_size=2, flush_seconds=60, max_pending=2, submit_timeout=0.05)
    try:
        for _ in range(6):
            writer.submit(stored_completion())
        # The thread holds one batch while it retries, the queue holds 2 more, the rest waits briefly and is dropped.
        assert writer.dropped_full >= 1
    finally:
        with store.engine.begin() as connection:
            connection.execute(text("ALTER TABLE completions_away RENAME TO completions"))
        assert writer.close(timeout=30)
    assert stored(store) == 6 - writer.dropped_full
