"""Admin routes on the real served app: status, promote, rollback, canary; a hot-swap under streaming load.

These share the session's server, so each test leaves `current` on the base model and no canary behind.
"""

from __future__ import annotations

import threading
import time

import httpx
import pytest
from openai import OpenAI

from helpers import register_test_adapter

pytestmark = [pytest.mark.e2e]


@pytest.fixture(scope="module")
def admin(server):
    client = httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {server.admin_key}"}, timeout=120)
    yield client
    client.close()


@pytest.fixture
def back_to_base(admin):
    yield
    status = admin.get("/admin/status").json()
    if status["canary"]:
        admin.post("/admin/canary/abort", json={"reason": "test cleanup"})
    if status["current"] not in (None, "base"):
        assert admin.post("/admin/promote", json={"adapter": "base", "reason": "test cleanup"}).status_code == 200


def ask(client: OpenAI, prompt: str, **kwargs):
    return client.chat.completions.create(
        model="current", messages=[{"role": "user", "content": prompt}], temperature=0, max_tokens=24, **kwargs
    )


def test_status_has_the_contract_shape(admin):
    status = admin.get("/admin/status").json()
    for key in ("current", "previous", "canary", "engine", "base_model", "loop", "counts"):
        assert key in status
    assert set(status["counts"]) >= {"completions", "ratings", "comparisons", "examples", "users"}
    assert {"state", "last_decision"} <= set(status["loop"])
    assert httpx.get(admin.base_url.join("/admin/status")).status_code == 401


def test_promote_and_rollback_switch_current_at_once(server, admin, back_to_base):
    client = OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
    promoted = admin.post("/admin/promote", json={"adapter": server.adapter})
    assert promoted.status_code == 200, promoted.text
    assert promoted.json()["current"] == server.adapter
    assert ask(client, server.prompt).model == server.adapter  # the very next request
    back = admin.post("/admin/rollback", json={"reason": "test"})
    assert back.status_code == 200 and back.json()["current"] == "base"
    assert ask(client, server.prompt).model == "base"
    again = admin.post("/admin/rollback", json={})
    assert again.status_code == 409 and again.json()["error"]["code"] == "no_previous"
    # the rolled-back adapter is rejected: promoting it again needs force
    refused = admin.post("/admin/promote", json={"adapter": server.adapter})
    assert refused.status_code == 409 and refused.json()["error"]["code"] == "adapter_rejected"
    forced = admin.post("/admin/promote", json={"adapter": server.adapter, "force": True})
    assert forced.status_code == 200 and forced.json()["current"] == server.adapter


def test_unknown_adapters_are_404_forced_or_not(admin):
    for body in ({"adapter": "ft-9999"}, {"adapter": "ft-9999", "force": True}):
        reply = admin.post("/admin/promote", json=body)
        assert reply.status_code == 404 and reply.json()["error"]["code"] == "model_not_found"
    assert admin.post("/admin/promote", json={"adapter": "../etc/passwd"}).status_code == 400


def test_a_tampered_adapter_is_refused_and_nothing_switches(server, admin, back_to_base):
    name = register_test_adapter(server.settings, seed=7)
    weights = server.settings.adapters_dir / name / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-8] + b"tampered")
    before = admin.get("/admin/status").json()["current"]
    reply = admin.post("/admin/promote", json={"adapter": name})
    assert reply.status_code >= 400 and "SHA-256" in reply.json()["error"]["message"]
    assert admin.get("/admin/status").json()["current"] == before


def test_canary_takes_a_sticky_share_of_current(server, admin, back_to_base):
    client = OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
    reply = admin.post("/admin/canary", json={"adapter": server.adapter, "fraction": 0.5, "force": True})
    assert reply.status_code == 200, reply.text
    assert reply.json()["canary"]["adapter"] == server.adapter
    answered = {user: ask(client, server.prompt, user=user).model for user in (f"user-{i}" for i in range(16))}
    arms = set(answered.values())
    assert arms == {"base", server.adapter}  # 16 users at 50 %: both arms (p of one arm only: 2^-15)
    for user, model in list(answered.items())[:4]:  # sticky: the same user stays on the same arm
        assert ask(client, server.prompt, user=user).model == model
    status = admin.get("/admin/status").json()
    assert set(status["canary"]["ratings"]) == {"canary", "current"}
    assert admin.post("/admin/canary/abort", json={"reason": "test"}).json()["canary"] is None


def test_hot_swap_under_streaming_load_drops_nothing(server, admin, back_to_base):
    second = register_test_adapter(server.settings, seed=11)
    client = OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=120)
    results: list[tuple[str, str]] = []
    failures: list[str] = []
    stop = threading.Event()

    def stream_forever() -> None:
        while not stop.is_set():
            try:
                chunks = list(
                    client.chat.completions.create(
                        model="current",
                        messages=[{"role": "user", "content": server.prompt}],
                        max_tokens=32,
                        temperature=0,
                        stream=True,
                    )
                )
                text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
                results.append((chunks[0].model, text))
            except Exception as error:  # any failure at all is what this test is about
                failures.append(repr(error))

    threads = [threading.Thread(target=stream_forever) for _ in range(8)]
    for thread in threads:
        thread.start()
    try:
        time.sleep(2)
        swaps = []
        for adapter in (server.adapter, second, "base"):
            started = time.monotonic()
            reply = admin.post("/admin/promote", json={"adapter": adapter, "force": True})
            assert reply.status_code == 200, reply.text
            swaps.append(time.monotonic() - started)
            time.sleep(2)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=120)
    assert failures == []
    assert len(results) > 20
    models = {model for model, _ in results}
    assert models <= {"base", server.adapter, second} and len(models) >= 2
    # each model answered with its own greedy text: a response never mixes two adapters
    texts: dict[str, set[str]] = {}
    for model, text in results:
        texts.setdefault(model, set()).add(text)
    assert all(len(variants) == 1 for variants in texts.values()), texts
