"""Simulated users: they chat with a running server through the official `openai` SDK and rate answers by
a hidden preference, so the loop can be watched learning with no human in it.

The preference is one answer style of the demo corpus (`tldr` by default): a user rates an answer up
when it is written in that style, down otherwise, and flips the thumb with probability `noise`. A
careful user (the default) also rates garbled text down, as a person would; a loose one (`careful=False`)
judges the style marker only and upvotes garbled text that happens to carry it: the reward-hacking
stress test, where keeping quality up is left to the gate. With probability `compare_rate` a user asks
twice and also says which answer it prefers (`POST /v1/comparisons`).

The hidden preference MEASURES (`measure`: the share of fresh answers to held-out prompts in the target
style, and the share that is well-formed); it never reaches the loop's decisions except through the
ratings users post.
"""

from __future__ import annotations

import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import httpx

from retrain.demo import corpus


@dataclass
class RatedAnswer:
    at: float
    user: str
    adapter: str  # the model that answered (base or ft-…)
    liked: bool  # the hidden preference, before noise
    thumb: int  # what the user posted


@dataclass
class SimulatedUsers:
    url: str  # the server, e.g. http://127.0.0.1:8000
    api_key: str = "unused"
    users: int = 20
    target_style: str = corpus.TARGET_STYLE
    noise: float = 0.0
    careful: bool = True
    compare_rate: float = 0.1
    temperature: float = 1.0
    concurrency: int = 4
    seed: int = 0
    history: list[RatedAnswer] = field(default_factory=list)

    def __post_init__(self) -> None:
        from openai import OpenAI

        if self.target_style not in corpus.STYLES:
            raise ValueError(f"target_style must be one of {', '.join(corpus.STYLES)}, got {self.target_style!r}")
        if not 0 <= self.noise <= 1:
            raise ValueError(f"noise must be in [0, 1], got {self.noise}")
        self.client = OpenAI(base_url=self.url + "/v1", api_key=self.api_key, timeout=120, max_retries=3)
        self.http = httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {self.api_key}"}, timeout=60)
        self._rng = random.Random(self.seed)
        self._lock = threading.Lock()
        self._turn = 0

    # -- the hidden preference ---------------------------------------------------------------------
    def in_style(self, prompt: str, answer: str) -> bool:
        return corpus.classify_style(answer, corpus.topic_of(prompt)) == self.target_style

    def likes(self, prompt: str, answer: str) -> bool:
        return self.in_style(prompt, answer) and (not self.careful or corpus.is_well_formed(prompt, answer))

    # -- chatting and rating -----------------------------------------------------------------------
    def _draw(self) -> tuple[str, str, int, bool, float]:
        with self._lock:  # one seeded stream of choices, whatever the thread interleaving
            self._turn += 1
            topic = self._rng.choice(corpus.TOPICS)
            return (
                f"sim-{self._rng.randrange(self.users):03d}",
                self._rng.choice(corpus.prompts(topic)),
                self.seed * 1_000_003 + self._turn,
                self._rng.random() < self.compare_rate,
                self._rng.random(),
            )

    def _ask(self, user: str, prompt: str, seed: int) -> Any:
        return self.client.chat.completions.create(
            model="current",
            messages=[{"role": "user", "content": prompt}],
            temperature=self.temperature,
            seed=seed,
            max_tokens=128,
            user=user,
        )

    def _rate(self, user: str, prompt: str, response: Any, flip: float) -> RatedAnswer:
        answer = response.choices[0].message.content or ""
        liked = self.likes(prompt, answer)
        thumb = (1 if liked else -1) * (-1 if flip < self.noise else 1)
        reply = self.http.post("/v1/feedback", json={"completion_id": response.id, "rating": thumb, "user": user})
        reply.raise_for_status()
        return RatedAnswer(time.time(), user, response.model, liked, thumb)

    def one_session(self) -> list[RatedAnswer]:
        user, prompt, seed, compare, flip = self._draw()
        first = self._ask(user, prompt, seed)
        rated = [self._rate(user, prompt, first, flip)]
        if compare:
            second = self._ask(user, prompt, seed + 500_000)
            rated.append(self._rate(user, prompt, second, flip))
            a, b = rated
            winner = "tie" if a.liked == b.liked else (first.id if a.liked else second.id)
            reply = self.http.post(
                "/v1/comparisons", json={"completion_ids": [first.id, second.id], "winner": winner, "user": user}
            )
            reply.raise_for_status()
        with self._lock:
            self.history.extend(rated)
        return rated

    def run(self, ratings: int, *, deadline: float | None = None, on_rating=None) -> int:
        """Chat and rate until `ratings` more ratings are posted (or `deadline`, time.monotonic()); returns them."""
        target, posted = ratings, 0
        with ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="ratchet-sim") as pool:
            while posted < target and (deadline is None or time.monotonic() < deadline):
                batch = min(self.concurrency, max(1, target - posted))
                for rated in pool.map(lambda _: self.one_session(), range(batch)):
                    posted += len(rated)
                    if on_rating is not None:
                        on_rating(rated)
        return posted

    # -- measuring -------------------------------------------------------------------------------
    def measure(self, model: str, samples: int = 100, *, seed: int = 12345) -> dict[str, float]:
        """Preference (the share in the target style) and quality (the share well-formed) of `model` on fresh
        answers to held-out prompts; nothing is rated."""
        prompts = corpus.heldout_prompts()
        rng = random.Random(seed)
        picks = [rng.choice(prompts) for _ in range(samples)]

        def sample(item: tuple[int, str]) -> tuple[bool, bool]:
            i, prompt = item
            response = self.client.chat.completions.create(
                model=model,
                messages=[{"role": "user", "content": prompt}],
                temperature=self.temperature,
                seed=seed + i,
                max_tokens=128,
                user="ratchet-measure",
            )
            answer = response.choices[0].message.content or ""
            return self.in_style(prompt, answer), corpus.is_well_formed(prompt, answer)

        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            results = list(pool.map(sample, enumerate(picks)))
        return {
            "preference": sum(liked for liked, _ in results) / samples,
            "quality": sum(ok for _, ok in results) / samples,
            "samples": samples,
        }

    def close(self) -> None:
        self.http.close()
        self.client.close()
