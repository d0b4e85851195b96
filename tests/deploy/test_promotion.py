"""Promotion, rollback, the canary and pruning as changes of the stored state; the canary's decision;
a restarted runtime serves what it served (in-process runtime: no Ray needed for these)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from deploy import promotion
from deploy.canary import arm_counts, decide
from feedback.errors import Conflict, NotFound
from feedback.models import Completion
from feedback.registry import AdapterRegistry
from feedback.store import FeedbackStore
from ratchet.settings import Settings

from helpers import make_lora_adapter, register_test_adapter


@pytest.fixture
def workspace(tmp_path, demo_model_dir):
    from deploy.workspace import init_workspace

    settings = Settings(home=tmp_path / "ws", base_model=str(demo_model_dir), torch_threads=1)
    init_workspace(settings, progress=False)
    names = [register_test_adapter(settings, seed=i + 1) for i in range(4)]
    store = FeedbackStore(settings.store_url)
    yield settings, store, AdapterRegistry(store, settings.adapters_dir), names
    store.close()


def test_promote_then_rollback(workspace):
    settings, store, registry, (a, b, *_) = workspace
    state = promotion.promote(store, registry, a)
    assert (state["current"], state["previous"]) == (a, "base")
    state = promotion.promote(store, registry, b)
    assert (state["current"], state["previous"]) == (b, a)
    assert (registry.get(a).status, registry.get(b).status) == ("previous", "current")
    state = promotion.rollback(store, registry, reason="live numbers turned")
    assert (state["current"], state["previous"]) == (a, None)
    assert registry.get(b).status == "rejected"
    with pytest.raises(Conflict) as refused:
        promotion.rollback(store, registry)
    assert refused.value.code == "no_previous"
    actions = [d["action"] for d in promotion.decisions(store)]
    assert actions == ["promote", "promote", "rollback"]


def test_rejected_needs_force_and_unknown_is_404(workspace):
    settings, store, registry, (a, *_) = workspace
    registry.set_status(a, "rejected", {"verdict": "reject", "reasons": ["FAILED: win-rate 40%"]})
    with pytest.raises(Conflict) as refused:
        promotion.promote(store, registry, a)
    assert refused.value.code == "adapter_rejected" and "win-rate 40%" in str(refused.value)
    assert promotion.promote(store, registry, a, force=True)["current"] == a
    with pytest.raises(NotFound) as unknown:
        promotion.promote(store, registry, "ft-9999")
    assert unknown.value.code == "model_not_found"


def test_canary_start_and_abort(workspace):
    settings, store, registry, (a, b, *_) = workspace
    promotion.promote(store, registry, a)
    state = promotion.start_canary(store, registry, b, 0.3)
    assert state["canary"]["adapter"] == b and state["canary"]["fraction"] == 0.3
    with pytest.raises(Conflict):
        promotion.start_canary(store, registry, registry.list()[-1].name, 0.3)  # one canary at a time
    evidence = {"canary": {"p_worse": 0.01, "counts": {"canary": {"up": 1, "n": 20}}}}
    state = promotion.abort_canary(store, registry, reason="significantly worse", evidence=evidence)
    assert state["canary"] is None and state["current"] == a
    assert registry.get(b).status == "rejected"
    # the numbers go with the decision, in the log and on the rejected adapter's record
    assert promotion.decisions(store)[-1]["evidence"] == evidence
    assert registry.get(b).decision == {"verdict": "rollback", "reasons": ["significantly worse"], "evidence": evidence}
    assert "evidence" not in promotion.decisions(store)[-2]  # the canary's start was given none


def test_prune_keeps_what_serves_and_the_newest(workspace):
    settings, store, registry, (a, b, c, d) = workspace
    promotion.promote(store, registry, a)
    pruned = promotion.prune(store, registry, keep=1)  # keeps a (current), d (newest)
    assert sorted(pruned) == sorted([b, c])
    assert not (settings.adapters_dir / b).exists() and (settings.adapters_dir / a).exists()
    assert registry.get(b).status == "retired"  # the record stays
    with pytest.raises(Conflict, match="retired"):
        promotion.promote(store, registry, b)


def _rated(store: FeedbackStore, route: str, adapter: str, ups: int, downs: int) -> None:
    rows = [
        Completion(
            id=f"chatcmpl-{route}-{i}",
            model="current",
            adapter=adapter,
            base_model="demo",
            route=route,
            messages=[{"role": "user", "content": "hi"}],
            choices=[{"index": 0, "text": "x"}],
        )
        for i in range(ups + downs)
    ]
    store.record_completions(rows)
    for i, row in enumerate(rows):
        store.rate(row.id, 0, rating=1 if i < ups else -1, user=f"u{i}")


def test_canary_decisions_follow_the_live_numbers(workspace):
    settings, store, registry, (a, b, *_) = workspace
    settings = settings.model_copy(update={"canary_min_ratings": 10})
    canary = {"adapter": b, "fraction": 0.5, "started": time.time() - 60}
    _rated(store, "canary", b, ups=2, downs=14)
    _rated(store, "current", a, ups=12, downs=4)
    counts = arm_counts(store, canary)
    assert counts == {"canary": {"up": 2, "n": 16}, "current": {"up": 12, "n": 16}}
    assert decide(counts, settings)["action"] == "rollback"
    assert decide({"canary": {"up": 14, "n": 16}, "current": {"up": 3, "n": 16}}, settings)["action"] == "promote"
    assert decide({"canary": {"up": 3, "n": 5}, "current": {"up": 3, "n": 5}}, settings)["action"] == "wait"
    stats = decide(counts, settings)["stats"]  # every verdict names its test and thresholds
    assert stats["thresholds"] == {
        "min_ratings": 10,
        "max_ratings": settings.canary_max_ratings,
        "alpha": settings.canary_alpha,
        "margin": settings.canary_margin,
    }
    assert "Fisher" in stats["test"] and stats["candidate"]["n"] == 16 and stats["p_worse"] < 0.05
    # after the canary started only: older ratings do not count
    assert arm_counts(store, {**canary, "started": time.time() + 60})["canary"]["n"] == 0


def test_restarted_runtime_serves_the_stored_current(workspace):
    from serving.runtime import ServingRuntime

    settings, store, registry, (a, *_) = workspace
    promotion.promote(store, registry, a)

    async def route_after_start() -> tuple[str, list[str]]:
        runtime = ServingRuntime(settings)
        await runtime.start()
        try:
            return (await runtime.route("current", "someone")).answered, runtime.engine.adapters()
        finally:
            await runtime.shutdown()

    answered, loaded = asyncio.run(route_after_start())
    assert answered == a and a in loaded


def test_an_adapter_the_engine_cannot_load_is_a_409_without_paths(workspace):
    import json

    from feedback.errors import DomainError
    from serving.errors import domain_status
    from serving.runtime import ServingRuntime

    settings, store, registry, _ = workspace
    _, name = registry.next_name("prefix")
    folder = make_lora_adapter(Path(settings.base_model_path), settings.adapters_dir / name, seed=3)
    config = json.loads((folder / "adapter_config.json").read_text())
    (folder / "adapter_config.json").write_text(json.dumps({**config, "peft_type": "PREFIX_TUNING"}))
    registry.register(name, method="sft", base_model=settings.base_model_id, parent=None, path=folder)

    async def route() -> DomainError:
        runtime = ServingRuntime(settings)
        await runtime.start()
        try:
            await runtime.route(name, "someone")
        except DomainError as error:
            return error
        finally:
            await runtime.shutdown()
        raise AssertionError("the engine loaded a prefix-tuning adapter")

    error = asyncio.run(route())
    assert (domain_status(error), error.code) == (409, "adapter_load_failed")
    assert "only LoRA adapters" in error.message and str(settings.home) not in error.message


def test_a_busy_engine_is_a_503_to_retry_and_a_broken_adapter_a_409(tmp_path):
    from serving.engine import AdapterBusyError, AdapterLoadError
    from serving.errors import as_response
    from serving.runtime import _load_refused

    busy = _load_refused("ft-0001", AdapterBusyError("all 8 adapter slots are in use; raise max_adapters"), tmp_path)
    answer = as_response(busy)
    assert (answer.status_code, busy.code, answer.headers["retry-after"]) == (503, "adapter_unavailable", "2")
    broken = _load_refused("ft-0001", AdapterLoadError(f"could not load from {tmp_path}/ft-0001: bad"), tmp_path)
    assert (as_response(broken).status_code, broken.code) == (409, "adapter_load_failed")
    assert str(tmp_path) not in broken.message and "<adapters>/ft-0001" in broken.message
