"""Completion logging that never blocks a request: a queue and one background thread that batches.

`submit(completion)` puts the row in memory and returns at once. A background thread commits what is
waiting in one transaction (`FeedbackStore.record_completions`) as soon as `batch_size` rows wait, the
oldest row has waited `flush_seconds`, or someone asks (`flush`, `ensure_committed`, `close`).

Policies, decided here once:
- **Full queue** (`max_pending` rows waiting, the database far behind): `submit` blocks the caller up to
  `submit_timeout` seconds for room, then drops the row, logs it and counts it in `dropped_full`.
  Dropping is the last resort; a serving process under that much back-pressure has a dead database.
- **Transient database errors** (connection lost, database locked): the batch is kept and retried with
  exponential backoff (50 ms doubling to 5 s), forever, logging each failure; the thread never dies.
- **Bad rows** (a constraint or data error, a value that is not JSON): the batch is retried one row per
  transaction, and only the rows that fail are dropped, logged and counted in `dropped_invalid`. An id
  that is already stored is not an error (the insert skips it), so a retried batch cannot fail on its
  own earlier success.
- **After close()**: `submit` writes through synchronously, so a request still finishing while the app
  shuts down is not lost.

`ensure_committed(id)` is what the rating route calls first: a just-served completion whose write is
still queued gets flushed now, so it is never reported "unknown".
"""

from __future__ import annotations

import atexit
import logging
import threading
import time
from collections import deque

from sqlalchemy.exc import DataError, DBAPIError, IntegrityError

from feedback.models import Completion
from feedback.store import FeedbackStore

log = logging.getLogger(__name__)

MAX_BATCH_ROWS = 5000  # rows per transaction when a backlog is flushed at once
BACKOFF_FIRST, BACKOFF_MAX = 0.05, 5.0


class CompletionLogWriter:
    """Batches completions into few commits on a background thread. Thread-safe."""

    def __init__(
        self,
        store: FeedbackStore,
        *,
        batch_size: int = 64,
        flush_seconds: float = 0.2,
        max_pending: int = 10_000,
        submit_timeout: float = 2.0,
    ) -> None:
        if batch_size < 1 or flush_seconds <= 0 or max_pending < batch_size:
            raise ValueError("need batch_size >= 1, flush_seconds > 0 and max_pending >= batch_size")
        self.store = store
        self.batch_size, self.flush_seconds = batch_size, flush_seconds
        self.max_pending, self.submit_timeout = max_pending, submit_timeout
        # One condition guards everything below; the thread and every caller wait on it.
        self._cond = threading.Condition()
        self._queue: deque[tuple[int, float, Completion]] = deque()  # (sequence, submitted at, row)
        self._pending: dict[str, int] = {}  # id -> rows with that id queued or being written
        self._submitted = 0  # sequence number of the last submitted row
        self._done = 0  # every row with sequence <= _done is committed (or dropped as invalid)
        self._flush_wanted = 0  # write without waiting for a full batch until _done reaches this
        self._closing = False
        self.commits = 0  # transactions that committed rows
        self.rows_written = 0  # rows committed (an id already stored counts: it is there)
        self.dropped_full = 0
        self.dropped_invalid = 0
        self.errors = 0  # failed write attempts (each one retried)
        self._thread = threading.Thread(target=self._run, name="completion-log-writer", daemon=True)
        self._thread.start()
        atexit.register(self.close)

    # -- the callers' side ---------------------------------------------------------------------
    def submit(self, completion: Completion) -> None:
        """Queue one completion for writing; returns at once unless the queue is full (see module doc)."""
        if not isinstance(completion, Completion):
            raise TypeError(f"submit() takes a Completion, not {type(completion).__name__}")
        with self._cond:
            deadline = time.monotonic() + self.submit_timeout
            while len(self._queue) >= self.max_pending and not self._closing:
                left = deadline - time.monotonic()
                if left <= 0:
                    self.dropped_full += 1
                    log.error("completion log queue full (%d rows): dropped %s", self.max_pending, completion.id)
                    return
                self._cond.wait(left)
            if not self._closing:
                self._submitted += 1
                self._queue.append((self._submitted, time.monotonic(), completion))
                self._pending[completion.id] = self._pending.get(completion.id, 0) + 1
                self._cond.notify_all()
                return
        # Closed (or closing while we waited for room): the thread may be gone, so write it ourselves.
        self.store.record_completions([completion])

    def flush(self, timeout: float | None = None) -> bool:
        """Block until every row submitted before this call is committed (or dropped as invalid); False if
        `timeout` ran out first."""
        with self._cond:
            target = self._submitted
            self._flush_wanted = max(self._flush_wanted, target)
            self._cond.notify_all()
            return self._cond.wait_for(lambda: self._done >= target, timeout)

    def ensure_committed(self, completion_id: str, timeout: float | None = 5.0) -> bool:
        """Make sure `completion_id` is not waiting here: flush it now if it is.

        True when nothing of it is pending any more: the database is then the truth (committed, or never
        submitted, or dropped as invalid). False on timeout: the database is failing (answer 503).
        """
        with self._cond:
            if completion_id not in self._pending:
                return True
            self._flush_wanted = max(self._flush_wanted, self._submitted)
            self._cond.notify_all()
            return self._cond.wait_for(lambda: completion_id not in self._pending, timeout)

    def is_pending(self, completion_id: str) -> bool:
        """Whether `completion_id` still waits here (never blocks: callers skip `ensure_committed` if not)."""
        with self._cond:
            return completion_id in self._pending

    @property
    def pending_ids(self) -> set[str]:
        """Ids submitted but not yet committed (queued or being written)."""
        with self._cond:
            return set(self._pending)

    def close(self, timeout: float | None = 30.0) -> bool:
        """Flush everything and stop the thread (idempotent). False if rows were still unwritten at timeout."""
        with self._cond:
            self._closing = True
            self._flush_wanted = max(self._flush_wanted, self._submitted)
            self._cond.notify_all()
        self._thread.join(timeout)
        atexit.unregister(self.close)
        with self._cond:
            left = len(self._pending)
        if left:
            log.error("completion log writer closed with %d rows unwritten (database unreachable?)", left)
        return left == 0

    def __enter__(self) -> CompletionLogWriter:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # -- the thread's side ---------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            self._write(batch)

    def _next_batch(self) -> list[tuple[int, float, Completion]] | None:
        """Wait until a batch is due and take it off the queue (its ids stay pending); None = stop."""
        with self._cond:
            while True:
                if self._queue and self._due():
                    take = min(len(self._queue), MAX_BATCH_ROWS)
                    return [self._queue.popleft() for _ in range(take)]
                if self._closing and not self._queue:
                    return None
                oldest = self._queue[0][1] if self._queue else None
                self._cond.wait(None if oldest is None else oldest + self.flush_seconds - time.monotonic())

    def _due(self) -> bool:
        return (
            self._closing
            or len(self._queue) >= self.batch_size
            or self._flush_wanted > self._done
            or time.monotonic() - self._queue[0][1] >= self.flush_seconds
        )

    def _write(self, batch: list[tuple[int, float, Completion]]) -> None:
        """Commit `batch`, retrying until it is written; never raises."""
        delay = BACKOFF_FIRST
        while True:
            rows = [row for _, _, row in batch]  # row-by-row retries shrink the batch
            try:
                self.store.record_completions(rows)
                self._finish(batch, commits=1, invalid=0)
                return
            except Exception as error:
                if _row_fault(error):
                    log.warning("a batch of %d completions was refused (%s); writing row by row", len(rows), error)
                    if self._write_row_by_row(batch):
                        return
                else:
                    log.error("writing %d completions failed, retrying in %.2fs: %s", len(rows), delay, error)
            self.errors += 1
            time.sleep(delay)
            delay = min(delay * 2, BACKOFF_MAX)

    def _write_row_by_row(self, batch: list[tuple[int, float, Completion]]) -> bool:
        """Commit each row alone and drop those that can never be written; False on a transient error."""
        commits = invalid = 0
        for position, (_, _, row) in enumerate(batch):
            try:
                self.store.record_completions([row])
                commits += 1
            except Exception as error:
                if not _row_fault(error):
                    log.error("row-by-row write failed: %s", error)
                    # Rows already committed are done; the rest goes back to the retry loop.
                    self._finish(batch[:position], commits=commits, invalid=invalid)
                    del batch[:position]
                    return False
                invalid += 1
                log.error("dropped completion %s, which cannot be stored: %s", row.id, error)
        self._finish(batch, commits=commits, invalid=invalid)
        return True

    def _finish(self, batch: list[tuple[int, float, Completion]], *, commits: int, invalid: int) -> None:
        if not batch:
            return
        with self._cond:
            for _, _, row in batch:
                count = self._pending.pop(row.id, 1) - 1
                if count:
                    self._pending[row.id] = count
            # Batches are written in submission order, so the last sequence marks everything before it.
            self._done = batch[-1][0]
            self.commits += commits
            self.rows_written += len(batch) - invalid
            self.dropped_invalid += invalid
            self._cond.notify_all()


def _row_fault(error: Exception) -> bool:
    """True when the rows are at fault (a constraint, bad data, a value that cannot be serialized), so a
    retry cannot help; False for the database's own failures (connection, lock, missing table)."""
    return isinstance(error, (IntegrityError, DataError)) or not isinstance(error, DBAPIError)
