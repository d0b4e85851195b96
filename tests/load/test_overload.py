"""Overload on the real served app: twice the capacity is shed fast in OpenAI's shape, and nothing sticks.

Capacity is what the replica admits at once, `max_concurrent_requests` (64 on the session server). Each
round sends a burst of twice that many chat requests at the same moment (long streams, ignore_eos, so
none ends by itself during the round), and as many requests to the rest of the API (models, ratings)
with them; non-streaming chats follow while the capacity is full. Every client holds what it got
(an admitted stream is read to its first event, then kept open) until all have an answer, so the count
of admitted requests is exact: no more than the capacity (admission is checked and taken in one step)
and no fewer (nothing is refused while a slot is free). The rest must be 429 with Retry-After, or 503,
in OpenAI's error body: never a 500, never Ray Serve's own plain-text rejection, never a hang (every
client has a timeout). Then the clients drop their streams, the in-flight gauge must return to zero,
and every request afterwards succeeds. The replica's RSS (its own /metrics) must not grow round after
round.
"""

from __future__ import annotations

import asyncio
import json
import re
import time

import httpx
import openai
import pytest
from openai import AsyncOpenAI

pytestmark = [pytest.mark.e2e]

ROUNDS = 2
CLIENT_TIMEOUT = 60.0  # a request that gets no answer this long is a hang
STREAM_TOKENS = 400  # far more than a round lasts: an admitted stream holds its slot until it is dropped
SHED_SHAPE = {"message", "type", "param", "code"}


def metric(text: str, name: str) -> float:
    match = re.search(rf"^{name} (\S+)$", text, re.MULTILINE)
    assert match, f"/metrics has no {name}"
    return float(match.group(1))


async def replica_metrics(client: httpx.AsyncClient) -> tuple[float, float]:
    """(RSS bytes of the replica and its engine's process, chat requests in flight), from its own /metrics."""
    text = (await client.get("/metrics")).text
    rss = metric(text, "process_resident_memory_bytes") + metric(text, "ratchet_engine_resident_memory_bytes")
    return rss, metric(text, "ratchet_requests_in_flight")


class Outcome:
    def __init__(self) -> None:
        self.status: int | None = None
        self.headers: httpx.Headers | None = None
        self.body = b""
        self.error: str | None = None
        self.seconds = 0.0


async def one(client: httpx.AsyncClient, body: dict, settled: asyncio.Event, outcome: Outcome) -> None:
    """Send one chat request; hold an admitted stream open (first event read) until `settled`."""
    started = time.perf_counter()
    try:
        async with client.stream("POST", "/v1/chat/completions", json=body) as response:
            outcome.status, outcome.headers = response.status_code, response.headers
            if response.status_code == 200 and body["stream"]:
                lines = response.aiter_lines()
                outcome.body = (await anext(lines)).encode()  # the role chunk: admitted, generating
                outcome.seconds = time.perf_counter() - started
                await settled.wait()
                return  # leaving the block drops the stream mid-answer
            outcome.body = await response.aread()
    except httpx.HTTPError as error:
        outcome.error = f"{type(error).__name__}: {error}"
    outcome.seconds = time.perf_counter() - started


def chat_body(prompt: str, *, stream: bool, user: str) -> dict:
    return {
        "model": "base",
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": STREAM_TOKENS if stream else 8,
        "ignore_eos": True,
        "stream": stream,
        "user": user,
    }


async def until_answered(outcomes: list[Outcome]) -> None:
    deadline = time.monotonic() + CLIENT_TIMEOUT
    while time.monotonic() < deadline and not all(o.status is not None or o.error for o in outcomes):
        await asyncio.sleep(0.05)


async def other(client: httpx.AsyncClient, request: tuple[str, str, dict | None], outcome: Outcome) -> None:
    """One request to the rest of the API (models, feedback): no admission slot, but a Serve slot."""
    method, path, body = request
    started = time.perf_counter()
    try:
        response = await client.request(method, path, json=body)
        outcome.status, outcome.headers, outcome.body = response.status_code, response.headers, response.content
    except httpx.HTTPError as error:
        outcome.error = f"{type(error).__name__}: {error}"
    outcome.seconds = time.perf_counter() - started


async def overload_round(server, client: httpx.AsyncClient, capacity: int, number: int, rated: str) -> dict:
    """A burst of 2 x capacity streams at once, with 2 x capacity requests to the rest of the API (half
    /v1/models, half ratings of `rated`) at the same moment; then, while the admitted streams are held
    open, capacity / 4 non-streaming chats, one through the openai SDK, /health and /v1/models."""
    prompt = server.prompt
    settled = asyncio.Event()
    burst = [Outcome() for _ in range(2 * capacity)]
    tasks = [
        asyncio.create_task(one(client, chat_body(prompt, stream=True, user=f"overload-{i}"), settled, o))
        for i, o in enumerate(burst)
    ]
    requests = [
        ("GET", "/v1/models", None)
        if i % 2
        else ("POST", "/v1/feedback", {"completion_id": rated, "rating": 1, "user": f"overload-{number}-{i}"})
        for i in range(2 * capacity)
    ]
    others = [Outcome() for _ in requests]
    tasks += [asyncio.create_task(other(client, r, o)) for r, o in zip(requests, others, strict=True)]
    await until_answered(burst + others)
    # the admitted streams are all open: non-streaming requests now must be refused too
    extra = [Outcome() for _ in range(capacity // 4)]
    await asyncio.gather(
        *(one(client, chat_body(prompt, stream=False, user=f"extra-{i}"), settled, o) for i, o in enumerate(extra))
    )
    rss, _ = await replica_metrics(client)
    health = (await client.get("/health")).status_code
    models = (await client.get("/v1/models")).status_code
    sdk = AsyncOpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=CLIENT_TIMEOUT)
    try:
        await sdk.chat.completions.create(model="base", messages=[{"role": "user", "content": prompt}], max_tokens=4)
        sdk_refusal = None
    except openai.RateLimitError as error:
        sdk_refusal = error
    finally:
        await sdk.close()
    settled.set()
    await asyncio.wait_for(asyncio.gather(*tasks), CLIENT_TIMEOUT)
    return {
        "burst": burst,
        "extra": extra,
        "others": others,
        "rss_peak": rss,
        "health": health,
        "models": models,
        "sdk": sdk_refusal,
    }


async def wait_idle(client: httpx.AsyncClient) -> float:
    """Wait (bounded) until the replica has no chat request in flight; returns the seconds it took."""
    started = time.monotonic()
    while time.monotonic() - started < 30:
        _, in_flight = await replica_metrics(client)
        if in_flight == 0:
            return time.monotonic() - started
        await asyncio.sleep(0.2)
    raise AssertionError(f"{in_flight:.0f} chat requests still in flight 30 s after every client left")


def spread(outcomes: list[Outcome], status: int | None) -> str:
    seconds = sorted(o.seconds for o in outcomes if status is None or o.status == status)
    return f"{seconds[len(seconds) // 2]:.2f} / {seconds[-1]:.2f} s" if seconds else "-"


def check_shed(outcome: Outcome) -> None:
    """A refusal the client can act on: 429 (or 503) with Retry-After and OpenAI's error body."""
    assert outcome.status in (429, 503), (outcome.status, outcome.body[:200])
    assert outcome.headers.get("retry-after"), outcome.headers
    error = json.loads(outcome.body)["error"]  # Ray Serve's own rejection is plain text: this would fail
    assert set(error) == SHED_SHAPE, error
    if outcome.status == 429:
        assert error["type"] == "rate_limit_error" and error["code"] == "server_overloaded", error


async def recovery(server, prompt: str) -> list[str]:
    """After the load: 16 concurrent chats (half streaming) through the openai SDK; all must succeed."""
    sdk = AsyncOpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=CLIENT_TIMEOUT)

    async def chat(i: int) -> str:
        messages = [{"role": "user", "content": prompt}]
        if i % 2:
            stream = await sdk.chat.completions.create(model="base", messages=messages, max_tokens=16, stream=True)
            chunks = [chunk async for chunk in stream]
            assert chunks and chunks[-1].choices[0].finish_reason in ("stop", "length")
            return chunks[0].id
        answer = await sdk.chat.completions.create(model="base", messages=messages, max_tokens=16)
        assert answer.choices[0].message.content
        return answer.id

    try:
        return await asyncio.gather(*(chat(i) for i in range(16)))
    finally:
        await sdk.close()


async def run_overload(server) -> dict:
    capacity = server.settings.max_concurrent_requests
    limits = httpx.Limits(max_connections=6 * capacity, max_keepalive_connections=6 * capacity)
    report: dict = {"rounds": []}
    async with httpx.AsyncClient(base_url=server.url, timeout=CLIENT_TIMEOUT, limits=limits) as client:
        await wait_idle(client)
        report["rss_before"], _ = await replica_metrics(client)
        answer = await client.post("/v1/chat/completions", json=chat_body(server.prompt, stream=False, user="rated"))
        for number in range(ROUNDS):
            round_ = await overload_round(server, client, capacity, number, answer.json()["id"])
            round_["idle_seconds"] = await wait_idle(client)
            report["rounds"].append(round_)
        report["rss_after"], _ = await replica_metrics(client)
    report["recovered"] = await recovery(server, server.prompt)
    return report


def test_twice_the_capacity_is_shed_fast_in_openai_shape_and_the_server_recovers(server):
    capacity = server.settings.max_concurrent_requests
    report = asyncio.run(run_overload(server))

    for number, round_ in enumerate(report["rounds"], 1):
        outcomes = round_["burst"] + round_["extra"]
        hung = [o.error for o in outcomes + round_["others"] if o.error]
        assert not hung, f"round {number}: {len(hung)} requests got no answer: {hung[:3]}"
        admitted = [o for o in outcomes if o.status == 200]
        shed = [o for o in outcomes if o.status != 200]
        assert len(admitted) == capacity, f"round {number}: {len(admitted)} admitted of {len(outcomes)}"
        assert all(o.status != 200 for o in round_["extra"]), "a request got in while the capacity was full"
        for outcome in shed:
            check_shed(outcome)
        # the rest of the API in the same flood: answered, or refused in the same shape (never by Serve)
        for outcome in round_["others"]:
            if outcome.status not in (200, 201):
                check_shed(outcome)
        # the capacity full: the rest of the API still answers, and the SDK gets a RateLimitError to retry
        assert round_["health"] == 200 and round_["models"] == 200
        assert round_["sdk"] is not None and round_["sdk"].code == "server_overloaded"
        assert round_["sdk"].response.headers.get("retry-after")
        print(
            f"\nround {number}: {len(admitted)} admitted, {len(shed)} shed; answered in (median / max): "
            f"burst refusals {spread(round_['burst'], 429)}, rest of the API {spread(round_['others'], None)}, "
            f"refusals once full {spread(round_['extra'], 429)}; replica RSS at the peak "
            f"{round_['rss_peak'] / 2**20:.0f} MiB; idle {round_['idle_seconds']:.1f} s after the clients left"
        )

    # memory: bounded, and no growth from one overload round to the next
    first, last = report["rounds"][0]["rss_peak"], report["rounds"][-1]["rss_peak"]
    assert last - first < 64 * 2**20, f"RSS grew {(last - first) / 2**20:.0f} MiB between identical rounds"
    assert report["rss_after"] - report["rss_before"] < 512 * 2**20, (report["rss_before"], report["rss_after"])

    # recovery: everything succeeds once the load is gone
    assert len(set(report["recovered"])) == 16
