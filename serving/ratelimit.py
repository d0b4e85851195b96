"""Rate limits on feedback, so one client cannot flood the training data.

Two token buckets guard every rating and comparison: one per (API key, user) and one per API key across
all its users (callers without a key count as one key, "anonymous"). A bucket holds a minute's worth of
tokens, refills continuously, and a request takes one token from each; when either is empty the answer is
429 with `Retry-After` (whole seconds until a token is back). The buckets live in the replica's memory:
with R replicas the limit is R times the setting, and a restart forgets them.
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable

from serving import metrics
from serving.errors import APIError

ANONYMOUS = "anonymous"
MAX_BUCKETS = 100_000  # least recently used buckets beyond this are dropped (they restart full)


class TokenBuckets:
    """Buckets of `capacity` tokens refilling at `per_minute` a minute, by key; LRU-bounded in number."""

    def __init__(self, per_minute: int, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.capacity = float(per_minute)
        self.rate = per_minute / 60.0
        self.clock = clock
        self._buckets: OrderedDict[object, tuple[float, float]] = OrderedDict()  # key -> (tokens, at)

    def wait_for(self, key: object) -> float:
        """Seconds until `key` has a token (0 when it has one now); does not take it."""
        tokens = self._tokens(key)
        return 0.0 if tokens >= 1.0 else (1.0 - tokens) / self.rate

    def take(self, key: object) -> None:
        self._buckets[key] = (self._tokens(key) - 1.0, self.clock())
        self._buckets.move_to_end(key)
        while len(self._buckets) > MAX_BUCKETS:
            self._buckets.popitem(last=False)

    def _tokens(self, key: object) -> float:
        tokens, at = self._buckets.get(key, (self.capacity, self.clock()))
        return min(self.capacity, tokens + (self.clock() - at) * self.rate)


class FeedbackRateLimiter:
    """`check(key_id, user)` takes one token from the user's and the key's bucket, or raises a 429."""

    def __init__(self, per_user: int, per_key: int, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.per_user = TokenBuckets(per_user, clock=clock) if per_user > 0 else None
        self.per_key = TokenBuckets(per_key, clock=clock) if per_key > 0 else None
        self._lock = threading.Lock()

    def check(self, key_id: str | None, user: str | None) -> None:
        key = key_id or ANONYMOUS
        limits = [
            (bucket, bucket_key, who)
            for bucket, bucket_key, who in (
                (self.per_user, (key, user or ""), "this user"),
                (self.per_key, key, "this API key" if key_id else "clients without an API key"),
            )
            if bucket is not None
        ]
        with self._lock:
            waits = [(bucket.wait_for(bucket_key), bucket, who) for bucket, bucket_key, who in limits]
            wait, bucket, who = max(waits, key=lambda w: w[0], default=(0.0, None, ""))
            if wait > 0:
                metrics.ERRORS.labels(type="rate_limited").inc()
                seconds = max(1, math.ceil(wait))
                raise APIError(
                    429,
                    f"too many ratings and comparisons from {who}: the limit is {int(bucket.capacity)} a minute; "
                    f"retry in {seconds} s",
                    code="rate_limit_exceeded",
                    headers={"Retry-After": str(seconds)},
                )
            for bucket, bucket_key, _ in limits:
                bucket.take(bucket_key)
