"""Prometheus metrics of a serving replica (GET /metrics renders them)."""

from __future__ import annotations

import contextlib

from prometheus_client import Counter, Gauge, Histogram

REQUESTS = Counter("ratchet_requests_total", "HTTP requests by route and status", ["route", "status"])
TOKENS_IN = Counter("ratchet_prompt_tokens_total", "Prompt tokens by the model that answered", ["model"])
TOKENS_OUT = Counter("ratchet_completion_tokens_total", "Generated tokens by the model that answered", ["model"])
TTFT = Histogram(
    "ratchet_time_to_first_token_seconds",
    "Time from request to first generated token",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
LATENCY = Histogram(
    "ratchet_request_latency_seconds",
    "End-to-end chat completion latency",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
IN_FLIGHT = Gauge("ratchet_requests_in_flight", "Chat requests running in this replica (the queue depth)")
ERRORS = Counter("ratchet_errors_total", "Errors by type", ["type"])
RATINGS = Counter("ratchet_ratings_total", "Ratings by the model that answered and the judgement", ["model", "kind"])
ENGINE_RSS = Gauge(
    "ratchet_engine_resident_memory_bytes",
    "Resident memory of this replica's child processes: the hf engine's process, or vLLM's engine core and "
    "workers (process_resident_memory_bytes is the replica's own); 0 while the engine runs inside the replica",
)


def _children_rss() -> float:
    import psutil

    total = 0
    for child in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):  # it exited between the listing and the reading
            total += child.memory_info().rss
    return float(total)


ENGINE_RSS.set_function(_children_rss)


def observe_completion(
    model: str, prompt_tokens: int, completion_tokens: int, seconds: float, first_token_seconds: float | None
) -> None:
    TOKENS_IN.labels(model=model).inc(prompt_tokens)
    TOKENS_OUT.labels(model=model).inc(completion_tokens)
    LATENCY.observe(seconds)
    if first_token_seconds is not None:
        TTFT.observe(first_token_seconds)
