"""Abuse the API in-process (the full app around a real ServingRuntime, no Ray): feedback rate limits, adapters
by registry name only, request limits as clear 400/413s, no secret in logs or error bodies, and no model code
run unless `trust_remote_code` is set.

Auth (tests/serving/test_api.py), registry path checks (tests/feedback/test_registry.py) and the 413 for a
declared Content-Length are tested where they live; this module covers what those leave open.
"""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import uuid
from contextlib import contextmanager
from dataclasses import dataclass

import pytest
from fastapi.testclient import TestClient

from feedback.models import Completion
from feedback.store import FeedbackStore
from ratchet.settings import Settings
from serving import auth
from serving import runtime as runtime_module
from serving.ratelimit import FeedbackRateLimiter, TokenBuckets

from helpers import register_test_adapter

PER_USER, PER_KEY = 3, 5  # this app's feedback limits a minute (the defaults are 120 and 60,000)
ERROR_FIELDS = {"message", "type", "param", "code"}


@dataclass
class Local:
    client: TestClient
    settings: Settings
    runtime: runtime_module.ServingRuntime
    adapter: str

    @property
    def admin(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.runtime.admin_key}"}


def _reset_auth_caches() -> None:
    auth._cache.clear()
    auth._any_keys[:] = [0.0, False]


@contextmanager
def _local_app(settings: Settings):
    """The full app around a started runtime on `settings`' workspace, as a TestClient."""
    from deploy.routes import routers
    from deploy.workspace import init_workspace
    from serving.app import create_app

    init_workspace(settings, progress=False)
    adapter = register_test_adapter(settings)
    runtime = runtime_module.ServingRuntime(settings)
    app = create_app(routers(), max_request_bytes=64 * 1024)
    _reset_auth_caches()
    before = runtime_module._runtime  # the module's app, while a test runs one of its own
    with TestClient(app, raise_server_exceptions=False) as client:
        client.portal.call(runtime.start)
        runtime_module.install(runtime)
        try:
            yield Local(client, settings, runtime, adapter)
        finally:
            runtime_module.install(before)
            client.portal.call(runtime.shutdown)
            _reset_auth_caches()


@pytest.fixture(scope="module")
def local(tmp_path_factory, demo_model_dir):
    settings = Settings(
        home=tmp_path_factory.mktemp("secure"),
        base_model=str(demo_model_dir),
        torch_threads=1,
        feedback_rate_per_minute=PER_USER,
        feedback_key_rate_per_minute=PER_KEY,
        max_n=4,
        judge_api_key="jk-" + uuid.uuid4().hex,
    )
    with _local_app(settings) as app:
        yield app


def _completions(settings: Settings, count: int) -> list[str]:
    rows = [
        Completion(
            id=f"chatcmpl-{uuid.uuid4().hex[:24]}",
            model="current",
            adapter="base",
            base_model=settings.base_model_id,
            messages=[{"role": "user", "content": "hi"}],
            choices=[{"index": 0, "text": "hello", "finish_reason": "stop"}],
        )
        for _ in range(count)
    ]
    with FeedbackStore(settings.store_url) as store:
        store.record_completions(rows)
    return [row.id for row in rows]


def _ratings_of(settings: Settings, user: str) -> int:
    from sqlalchemy import func, select

    from feedback.models import Rating

    with FeedbackStore(settings.store_url) as store, store.session() as session:
        return session.scalar(select(func.count()).select_from(Rating).where(Rating.user == user))


def _is_openai_error(response, status: int, code: str | None = None) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == ERROR_FIELDS
    if code is not None:
        assert error["code"] == code, error
    return error


# -- feedback rate limits ------------------------------------------------------------------------------


def test_token_buckets_refill_and_name_the_wait():
    now = [1000.0]
    limiter = FeedbackRateLimiter(per_user=3, per_key=0, clock=lambda: now[0])
    for _ in range(3):
        limiter.check("key-1", "ann")
    with pytest.raises(Exception) as refused:
        limiter.check("key-1", "ann")
    assert refused.value.status == 429 and refused.value.headers == {"Retry-After": "20"}  # 3 a minute: 20 s each
    limiter.check("key-1", "bob")  # another user of the key has a bucket of its own
    limiter.check("key-2", "ann")  # so does the same user name under another key
    now[0] += 19.0
    with pytest.raises(Exception) as still:
        limiter.check("key-1", "ann")
    assert still.value.headers == {"Retry-After": "1"}
    now[0] += 1.0
    limiter.check("key-1", "ann")  # one token back after 20 s
    buckets = TokenBuckets(60, clock=lambda: now[0])
    for _ in range(60):
        buckets.take("k")
    now[0] += 3600
    assert buckets.wait_for("k") == 0 and buckets._tokens("k") == 60  # refills to capacity, never past it


def test_feedback_is_rate_limited_per_user_and_per_key_and_refused_ratings_are_not_stored(local):
    ids = _completions(local.settings, 12)
    user = f"flood-{uuid.uuid4().hex[:6]}"
    for completion_id in ids[:PER_USER]:
        reply = local.client.post("/v1/feedback", json={"completion_id": completion_id, "rating": 1, "user": user})
        assert reply.status_code == 201, reply.text
    refused = local.client.post("/v1/feedback", json={"completion_id": ids[PER_USER], "rating": 1, "user": user})
    error = _is_openai_error(refused, 429, "rate_limit_exceeded")
    assert error["type"] == "rate_limit_error" and "this user" in error["message"]
    assert 1 <= int(refused.headers["Retry-After"]) <= 60 // PER_USER
    # comparisons draw from the same buckets
    pair = {"completion_ids": ids[4:6], "winner": ids[4], "user": user}
    _is_openai_error(local.client.post("/v1/comparisons", json=pair), 429, "rate_limit_exceeded")
    assert _ratings_of(local.settings, user) == PER_USER

    # other users of the same (here: no) key go on until the key's own bucket is empty
    others = [f"{user}-{i}" for i in range(PER_KEY)]
    answers = [
        local.client.post("/v1/feedback", json={"completion_id": ids[6 + i], "rating": -1, "user": other})
        for i, other in enumerate(others)
    ]
    accepted = PER_KEY - PER_USER
    assert [a.status_code for a in answers] == [201] * accepted + [429] * (PER_KEY - accepted)
    assert "without an API key" in answers[-1].json()["error"]["message"]
    assert sum(_ratings_of(local.settings, other) for other in others) == accepted


def test_a_key_has_its_own_feedback_bucket(local):
    """Rate limits are per key: once keyless callers are out of tokens, a keyed client still rates."""
    ids = _completions(local.settings, PER_KEY + 2)
    for i in range(PER_KEY + 1):  # empty the keyless bucket, whatever the tests before left in it
        last = local.client.post("/v1/feedback", json={"completion_id": ids[i], "rating": 1, "user": f"anon-{i}"})
    assert last.status_code == 429
    with FeedbackStore(local.settings.store_url) as store:
        key_id, key = store.add_api_key("rate-test")
    _reset_auth_caches()
    try:
        keyed = {"Authorization": f"Bearer {key}"}
        body = {"completion_id": ids[-1], "rating": 1, "user": "anon-0"}
        assert local.client.post("/v1/feedback", json=body, headers=keyed).status_code == 201
    finally:
        with FeedbackStore(local.settings.store_url) as store:
            store.revoke_api_key(key_id)
        _reset_auth_caches()


# -- adapters by registry name only -------------------------------------------------------------------


@pytest.mark.parametrize(
    "model",
    ["../../etc/passwd", "ft-0001/../../../etc", "/etc", "ft-0001-test/../ft-0001-test", "ft-..", "ft-0001\x00"],
)
def test_model_names_are_registry_names_not_paths(local, model):
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    reply = local.client.post("/v1/chat/completions", json=body)
    _is_openai_error(reply, 404, "model_not_found")
    assert local.runtime.engine.adapters() == [] or model not in local.runtime.engine.adapters()


@pytest.mark.parametrize("name", ["/etc/passwd", "ft-0001/../../etc", "ft-0001-test/..", "adapters/ft-0001-test"])
def test_the_admin_load_route_takes_names_only(local, name):
    reply = local.client.post("/admin/adapters/load", json={"adapter": name}, headers=local.admin)
    _is_openai_error(reply, 400)


def test_a_symlink_escape_is_refused_on_load_and_on_chat(local, tmp_path):
    """The same files, moved outside the adapters root and linked back: sha256 matches, the path does not."""
    name = register_test_adapter(local.settings, seed=5)
    folder = local.settings.adapters_dir / name
    outside = tmp_path / "elsewhere"
    shutil.move(folder, outside)
    folder.symlink_to(outside, target_is_directory=True)
    loaded = local.client.post("/admin/adapters/load", json={"adapter": name}, headers=local.admin)
    error = _is_openai_error(loaded, 409, "adapter_unsafe")
    assert "outside the adapters folder" in error["message"]
    assert str(local.settings.home.resolve()) not in error["message"]  # the workspace path stays on the server
    chat = {"model": name, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    _is_openai_error(local.client.post("/v1/chat/completions", json=chat), 409, "adapter_unsafe")
    assert name not in local.runtime.engine.adapters()


@pytest.mark.postgres
def test_nul_characters_are_a_400_on_postgres(tmp_path, demo_model_dir, postgres_url):
    """PostgreSQL text cannot hold NUL: such values are refused as bad input, never a 500, and a chat whose
    `user` has one is refused before its completion would be dropped by the log writer."""
    settings = Settings(home=tmp_path / "pg", base_model=str(demo_model_dir), database_url=postgres_url)
    with _local_app(settings) as app:
        (completion_id,) = _completions(settings, 1)
        chat = {"model": "base", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
        posts = [
            ("/v1/feedback", {"completion_id": "chatcmpl-a\x00b", "rating": 1}),
            ("/v1/feedback", {"completion_id": completion_id, "rating": 1, "user": "a\x00b"}),
            ("/v1/feedback", {"completion_id": completion_id, "rating": 1, "correction": "a\x00b"}),
            ("/v1/comparisons", {"completion_ids": [completion_id, "chatcmpl-\x00"], "winner": "tie"}),
            ("/v1/chat/completions", {**chat, "user": "a\x00b"}),
            ("/v1/fine_tuning/jobs", {"model": "base", "training_file": "file-a\x00b"}),
        ]
        for path, body in posts:
            _is_openai_error(app.client.post(path, json=body), 400)
        for path in ["/v1/files/file-a%00b", "/v1/fine_tuning/jobs/ftjob-a%00b/events", "/v1/files?after=a%00b"]:
            _is_openai_error(app.client.get(path), 400)
        in_content = {**chat, "messages": [{"role": "user", "content": "a\x00b"}]}  # JSON holds it: allowed
        assert app.client.post("/v1/chat/completions", json=in_content).status_code == 200


# -- request limits ----------------------------------------------------------------------------------


def test_n_max_tokens_and_prompt_length_limits_are_clear_400s(local):
    messages = [{"role": "user", "content": "tea"}]
    context = local.runtime.context_length

    def chat(**extra):
        return local.client.post("/v1/chat/completions", json={"model": "base", "messages": messages, **extra})

    error = _is_openai_error(chat(n=local.settings.max_n + 1), 400)
    assert error["param"] == "n" and str(local.settings.max_n) in error["message"]
    for field in ("max_tokens", "max_completion_tokens"):
        error = _is_openai_error(chat(**{field: context}), 400, "context_length_exceeded")
        assert error["param"] == "max_tokens" and str(context) in error["message"]
        assert _is_openai_error(chat(**{field: 0}), 400)["param"] == field
    long = [{"role": "user", "content": "tea " * (2 * context)}]
    error = _is_openai_error(local.client.post("/v1/chat/completions", json={"model": "base", "messages": long}), 400)
    assert error["code"] == "context_length_exceeded" and error["param"] == "messages"
    assert chat(max_tokens=2, n=local.settings.max_n).status_code == 200  # the limits themselves are allowed


def test_a_chunked_body_over_the_limit_is_413(local):
    """No Content-Length (chunked transfer): the body is counted as it arrives and cut off at the limit."""
    limit = 64 * 1024

    def chunks():
        yield b'{"model": "base", "messages": [{"role": "user", "content": "'
        for _ in range(2 * limit // 4096):
            yield b"a" * 4096
        yield b'"}]}'

    reply = local.client.post("/v1/chat/completions", content=chunks(), headers={"content-type": "application/json"})
    _is_openai_error(reply, 413, "request_too_large")
    small = local.client.post(
        "/v1/chat/completions",
        content=iter([json.dumps({"model": "base", "messages": [{"role": "user", "content": "hi"}]}).encode()]),
        headers={"content-type": "application/json"},
    )
    assert small.status_code == 200, small.text


# -- secrets ------------------------------------------------------------------------------------------


def test_no_key_reaches_the_logs_or_an_error_body(local, caplog):
    with FeedbackStore(local.settings.store_url) as store:
        key_id, key = store.add_api_key("log-test")
    _reset_auth_caches()
    wrong = "sk-wrong-" + uuid.uuid4().hex
    secrets = [key, wrong, local.runtime.admin_key, local.settings.judge_api_key.get_secret_value()]
    bodies = []
    try:
        with caplog.at_level(logging.DEBUG):
            keyed, admin = {"Authorization": f"Bearer {key}"}, local.admin
            chat = {"model": "base", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
            for method, path, headers, body in [
                ("POST", "/v1/chat/completions", keyed, chat),
                ("POST", "/v1/chat/completions", {"Authorization": f"Bearer {wrong}"}, chat),
                ("POST", "/v1/chat/completions", keyed, {**chat, "model": "ft-9999"}),
                ("POST", "/v1/feedback", keyed, {"completion_id": "chatcmpl-none", "rating": 1}),
                ("GET", "/admin/status", admin, None),
                ("GET", "/admin/status", keyed, None),  # a chat key on an admin route: 403
                ("GET", "/admin/status", {"Authorization": f"Bearer {wrong}"}, None),
                ("POST", "/admin/promote", admin, {"adapter": "ft-9999"}),
                ("POST", "/admin/adapters/load", {"Authorization": f"Bearer {wrong}"}, {"adapter": "x"}),
            ]:
                reply = local.client.request(method, path, headers=headers, json=body)
                assert reply.status_code < 500, reply.text
                bodies.append(reply.text)
    finally:
        with FeedbackStore(local.settings.store_url) as store:
            store.revoke_api_key(key_id)
        _reset_auth_caches()
    logged = "\n".join(f"{r.getMessage()} {r.exc_text or ''}" for r in caplog.records) + repr(local.settings)
    for secret in secrets:
        assert secret not in logged
        assert not any(secret in body for body in bodies)
    from serving.deployment import serve_config

    config = json.dumps(serve_config(local.settings))  # stored in Ray's GCS, shown by `serve status`
    assert local.settings.judge_api_key.get_secret_value() not in config


# -- remote code ------------------------------------------------------------------------------------


def test_model_code_runs_only_with_trust_remote_code(demo_model_dir, tmp_path, monkeypatch):
    """A model folder that ships Python (config auto_map): the default loads the known architecture and never
    imports the folder's code; trust_remote_code=True would run it (the control that the trap works)."""
    from serving.engines.hf import HFEngine

    model = tmp_path / "model-with-code"
    shutil.copytree(demo_model_dir, model)
    marker = tmp_path / "remote-code-ran"
    (model / "shipped_code.py").write_text(
        "from pathlib import Path\n"
        f"Path({str(marker)!r}).write_text('ran')\n"
        "from transformers import LlamaForCausalLM\n\n"
        "class ShippedModel(LlamaForCausalLM):\n    pass\n"
    )
    config = json.loads((model / "config.json").read_text())
    config["auto_map"] = {"AutoModelForCausalLM": "shipped_code.ShippedModel"}
    (model / "config.json").write_text(json.dumps(config))
    import transformers.dynamic_module_utils

    monkeypatch.setattr(transformers.dynamic_module_utils, "HF_MODULES_CACHE", str(tmp_path / "hf-modules"))

    assert Settings().trust_remote_code is False
    engine = HFEngine.from_settings(Settings(base_model=str(model), torch_threads=1))
    asyncio.run(engine.shutdown())
    assert type(engine._model.base).__name__ == "LlamaForCausalLM" and not marker.exists()
    trusted = HFEngine(str(model), torch_threads=1, trust_remote_code=True)
    asyncio.run(trusted.shutdown())
    assert type(trusted._model.base).__name__ == "ShippedModel" and marker.read_text() == "ran"
