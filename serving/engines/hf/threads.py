"""How many torch threads the hf engine's decode loop should use, timed on the model it will run.

More threads pay only when a decode step has enough arithmetic to split. On the 0.66M demo model a
32-row step takes as long on one thread as on two, and in the engine, where the second core also runs the
replica's HTTP work (and, served, Ray's proxy), one thread served more tokens/s than two
(benchmarks/bench_serving.py, docs/benchmarks.md). On the 30M model two threads make a step clearly faster.
So `pick_threads` times a step of `rows` rows with each candidate count and keeps the fewest threads that
are within `MARGIN` of the fastest: an extra thread has to buy at least that much, because under load it
competes with everything else in the replica for the same cores.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
from transformers.cache_utils import Cache

from serving.engines.hf.batch import new_cache

MARGIN = 1.25  # an extra thread must make a step at least 25 % faster
COMPUTE_BOUND_S = 0.25  # a step this slow on every thread has plenty to split: no need to time fewer


def candidates(most: int) -> list[int]:
    """1, 2, 4, ... up to `most`, and `most` itself."""
    counts = [1]
    while counts[-1] * 2 < most:
        counts.append(counts[-1] * 2)
    return sorted({*counts, most}) if most > 1 else [1]


def pick_threads(model: torch.nn.Module, rows: int, most: int, *, context: int = 16, steps: int = 4) -> int:
    """The fewest torch threads (1..most) whose decode step of `rows` rows is within MARGIN of the fastest."""
    if most <= 1:
        return 1
    before = torch.get_num_threads()
    try:
        with torch.inference_mode():
            step, _ = _stepper(model, rows, context)
            torch.set_num_threads(most)
            if _time(step, 1) > COMPUTE_BOUND_S:
                return most
            counts = candidates(most)
            best = {n: float("inf") for n in counts}
            for _ in range(2):  # interleaved, best of two: the machine's noise hits every count alike
                for n in counts:
                    torch.set_num_threads(n)
                    best[n] = min(best[n], _time(step, steps))
        return fewest_within(best)
    finally:
        torch.set_num_threads(before)


def fewest_within(seconds: dict[int, float], margin: float = MARGIN) -> int:
    """The smallest thread count whose step time is within `margin` of the fastest one's."""
    fastest = min(seconds.values())
    return min(n for n, s in seconds.items() if s <= margin * fastest)


def _stepper(model: torch.nn.Module, rows: int, context: int) -> tuple[Callable[[], None], Cache]:
    """A callable running one decode step of `rows` rows over a `context`-position cache (kept at that
    length, so every timed step is the same work), and that cache."""
    vocab = model.get_input_embeddings().num_embeddings
    device = next(model.parameters()).device
    cache = new_cache()
    prompt = torch.randint(0, vocab, (rows, context), device=device)
    model(input_ids=prompt, past_key_values=cache, use_cache=True, logits_to_keep=1)
    token = prompt[:, -1:]

    def step() -> None:
        model(input_ids=token, past_key_values=cache, use_cache=True, logits_to_keep=1)
        cache.crop(-1)  # drop the new position: every step sees the same cache length

    return step, cache


def _time(step, steps: int) -> float:
    step()  # warm-up for this thread count
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - start) / steps
