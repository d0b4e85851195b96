"""An ack means stored: kill -9 a writing process mid-stream, reopen the store, find every acked row.

The child (this file run as a script) prints an id on stdout only after the write returned: after `rate()`,
after a `GroupCommitter` future resolved (what the feedback route acks with a 2xx), or after
`CompletionLogWriter.flush()`. The parent reads some acks, SIGKILLs the child while it is still writing,
then reads whatever acks were already in the pipe and checks each one is in the database.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import pytest
from sqlalchemy import select

from feedback.group_commit import GroupCommitter
from feedback.models import Completion, Rating
from feedback.store import FeedbackStore, Judgement
from feedback.writer import CompletionLogWriter

ACKS_BEFORE_KILL = 40
REPO = Path(__file__).parents[2]


def _completion(user: str) -> Completion:
    return Completion(
        id=f"chatcmpl-{uuid.uuid4().hex[:24]}",
        user=user,
        model="current",
        adapter="base",
        base_model="demo-tiny-v1",
        messages=[{"role": "user", "content": "hi"}],
        choices=[{"index": 0, "text": "hello", "finish_reason": "stop"}],
    )


def child_rate(url: str) -> None:
    store = FeedbackStore(url)
    for i in range(100_000):
        c = _completion(f"user-{i}")
        store.record_completions([c])
        rating, _ = store.rate(c.id, 0, rating=1, user=c.user)
        print(rating.id, flush=True)


def child_group(url: str) -> None:
    """Eight threads rate through one GroupCommitter, as the feedback route's requests do: groups form."""
    store = FeedbackStore(url)
    committer = GroupCommitter(store, max_batch=64)
    printing = threading.Lock()

    def rater(t: int) -> None:
        for i in range(100_000):
            c = _completion(f"user-{t}-{i}")
            store.record_completions([c])
            rating, _, _ = committer.rate(Judgement(c.id, 0, rating=1, user=c.user)).result()
            with printing:
                print(rating.id, flush=True)

    threads = [threading.Thread(target=rater, args=(t,)) for t in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def child_writer(url: str) -> None:
    writer = CompletionLogWriter(FeedbackStore(url), batch_size=8, flush_seconds=60)
    for i in range(100_000):
        batch = [_completion(f"user-{i}") for _ in range(5)]
        for c in batch:
            writer.submit(c)
        writer.flush()
        print("\n".join(c.id for c in batch), flush=True)


def run_and_kill(mode: str, url: str) -> list[str]:
    """Start the child, read ACKS_BEFORE_KILL acks, kill -9 it mid-stream; every ack it printed."""
    child = subprocess.Popen(
        [sys.executable, "-u", __file__, mode, url],
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))},
    )
    acks = []
    try:
        while len(acks) < ACKS_BEFORE_KILL:
            line = child.stdout.readline()
            assert line, f"the child exited early with {child.wait()}"
            acks.append(line.strip())
        assert child.poll() is None, "the child must still be writing when it is killed"
        os.kill(child.pid, signal.SIGKILL)
        acks += [line.strip() for line in child.stdout if line.strip()]  # acked before the kill landed
    finally:
        child.kill()
        assert child.wait() == -signal.SIGKILL
        child.stdout.close()
    return acks


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["rate", "group"], ids=["own-commit", "shared-commits"])
def test_every_acked_rating_survives_kill_9(db_url: str, mode: str) -> None:
    acks = run_and_kill(mode, db_url)
    with FeedbackStore(db_url) as store, store.session() as session:
        stored = set(session.scalars(select(Rating.id).where(Rating.id.in_(acks))))
    assert len(acks) >= ACKS_BEFORE_KILL
    assert set(acks) - stored == set()


@pytest.mark.slow
def test_every_flushed_completion_survives_kill_9(db_url: str) -> None:
    acks = run_and_kill("writer", db_url)
    with FeedbackStore(db_url) as store, store.session() as session:
        stored = set(session.scalars(select(Completion.id).where(Completion.id.in_(acks))))
    assert len(acks) >= ACKS_BEFORE_KILL
    assert set(acks) - stored == set()


if __name__ == "__main__":
    {"rate": child_rate, "group": child_group, "writer": child_writer}[sys.argv[1]](sys.argv[2])
