"""Group commit for ratings: concurrent judgements share one transaction and one fsync.

A rating is acknowledged only once it is committed, so one commit per rating bounds the feedback route by
the disk's fsync rate. Here a background thread (two on Postgres) takes every judgement waiting in its
queue, writes them all in ONE transaction (the ratings in a few multi-row statements, feedback/ratings.py;
other work, such as comparisons, one call each), commits once, and only then resolves each caller's
future: an acknowledgement still means "committed", but many share the cost of the commit. There is no
timer: a lone rating is committed at once, and the judgements that arrive while a commit is on disk form
the next group, so a group grows exactly as fast as the load does (the way databases group their own
commits).

Failures stay each caller's own:
- A domain error (an unknown completion, a choice out of range) is raised by the store before it writes
  anything for that judgement, so it fails that future alone and the group goes on.
- Anything else (a constraint, a lost connection, a failed COMMIT) rolls the whole group back, and every
  judgement of it is then written in a transaction of its own, so one bad row cannot fail its neighbours
  and each future gets its own result or error. Nothing is acknowledged that was not committed.

`max_batch=1` is one transaction per judgement, as before groups (the benchmark's baseline).
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

from sqlmodel import Session

from feedback.ratings import Judgement
from feedback.store import FeedbackStore, InvalidFeedback, UnknownCompletion

log = logging.getLogger(__name__)
T = TypeVar("T")
Work = Callable[[Session], Any] | Judgement  # a judgement is written with the group's other ratings


class GroupCommitter:
    """Runs judgements and `work(session)` callables in shared transactions on `writers` threads. Thread-safe.

    With more than one writer, a group is written while the one before it waits on its commit (Postgres,
    whose commits are round trips to another process, gains; SQLite allows one writer at a time, so one).
    Groups in flight at once hold requests that were in flight at once, whose order no client can rely on;
    a client that waits for its answer before re-rating is always ordered."""

    def __init__(self, store: FeedbackStore, *, max_batch: int = 256, writers: int | None = None) -> None:
        if writers is None:  # see the class docstring
            writers = 2 if store.engine.dialect.name == "postgresql" else 1
        if max_batch < 1 or writers < 1:
            raise ValueError("max_batch and writers must be at least 1")
        self.store, self.max_batch = store, max_batch
        self._cond = threading.Condition()
        self._queue: deque[tuple[Work, Future]] = deque()
        self._closing = False
        self.commits = 0  # transactions committed
        self.written = 0  # judgements acknowledged
        self.regrouped = 0  # groups rolled back and written one by one
        self._threads = [
            threading.Thread(target=self._run, name=f"feedback-group-commit-{n}", daemon=True) for n in range(writers)
        ]
        for thread in self._threads:
            thread.start()

    def rate(self, judgement: Judgement) -> Future:
        """Queue a rating; its future resolves with (row, created, adapter) once it is COMMITTED, or raises
        InvalidFeedback / UnknownCompletion for a rating refused before anything of it was written."""
        return self.submit(judgement)

    def submit(self, work: Callable[[Session], T] | Judgement) -> Future[T]:
        """Queue `work`; its future resolves with what it returned once its transaction has COMMITTED."""
        future: Future[T] = Future()
        with self._cond:
            if self._closing:
                raise RuntimeError("the feedback committer is closed")
            self._queue.append((work, future))
            self._cond.notify()
        return future

    def close(self, timeout: float | None = 30.0) -> None:
        """Commit what is queued, then stop the threads (idempotent)."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        for thread in self._threads:
            thread.join(timeout)

    # -- the thread's side ---------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._queue or self._closing)
                if not self._queue:
                    return
                group = [self._queue.popleft() for _ in range(min(len(self._queue), self.max_batch))]
            group = [(work, future) for work, future in group if future.set_running_or_notify_cancel()]
            if group:
                self._commit(group)

    def _commit(self, group: list[tuple[Work, Future]]) -> None:
        results: list[tuple[Future, Any, BaseException | None]] = []
        try:
            with self.store.session() as session:
                ratings = [(work, future) for work, future in group if isinstance(work, Judgement)]
                others = [(work, future) for work, future in group if not isinstance(work, Judgement)]
                outcomes = self.store.rate_many(session, [work for work, _ in ratings])
                for (_, future), outcome in zip(ratings, outcomes, strict=True):
                    failed = isinstance(outcome, Exception)
                    results.append((future, None if failed else outcome, outcome if failed else None))
                for work, future in others:
                    try:
                        results.append((future, work(session), None))
                    except (InvalidFeedback, UnknownCompletion) as error:  # raised before it wrote anything
                        results.append((future, None, error))
        except Exception as error:
            if len(group) == 1:
                group[0][1].set_exception(error)
                return
            log.warning("a group of %d judgements failed (%s); writing each alone", len(group), error)
            with self._cond:
                self.regrouped += 1
            for item in group:
                self._commit([item])
            return
        with self._cond:
            self.commits += 1
            self.written += sum(error is None for _, _, error in results)
        for future, value, error in results:
            if error is None:
                future.set_result(value)
            else:
                future.set_exception(error)
