"""Who serves: promotion, rollback and the canary, as changes of the desired state in the store.

The store holds the routing state (`current`, `previous`, `canary`; written in one transaction) and every
decision (`decisions`, newest last). Replicas follow the stored state (serving/runtime.py), and a
restarted server comes back serving it. The functions here only plan and record; the admin routes
(deploy/routes/admin.py) first make their replica load and check the adapter, then call them, and the
CLI calls them directly when no server runs.

    promote(store, registry, "ft-0004")        current -> ft-0004, previous -> the old current
    rollback(store, registry)                  current -> previous (Conflict when there is none)
    start_canary(store, registry, "ft-0004", 0.2)
    abort_canary(store, registry, reason="canary: significantly worse")

Each takes `evidence`, the numbers the decision was taken on (the gate's checks, the canary's stats),
kept with the decision and, for a rejection, on the adapter's record.
"""

from __future__ import annotations

import shutil
import time
from typing import Any

from feedback.errors import Conflict, Invalid, NotFound
from feedback.models import AdapterStatus
from feedback.registry import AdapterRegistry, UnknownAdapter
from feedback.store import FeedbackStore

MAX_DECISIONS = 50
Evidence = dict[str, Any] | None


def check_promotable(registry: AdapterRegistry, adapter: str, *, force: bool = False) -> None:
    """404 for a name the registry lacks, 409 for a rejected or retired adapter (unless forced)."""
    if adapter == "base":
        return
    try:
        record = registry.get(adapter)
    except UnknownAdapter as error:
        raise NotFound(str(error), code="model_not_found", param="adapter") from error
    if record.status == AdapterStatus.RETIRED:
        raise Conflict(f"adapter {adapter} is retired: its files were pruned; retrain it", code="adapter_retired")
    if record.status == AdapterStatus.REJECTED and not force:
        reasons = "; ".join((record.decision or {}).get("reasons", [])[:3]) or "see `ratchet adapters`"
        raise Conflict(
            f"adapter {adapter} was rejected ({reasons}): pass force to promote it anyway", code="adapter_rejected"
        )


def _with(decision: dict[str, Any], evidence: Evidence) -> dict[str, Any]:
    """A decision with the numbers it was taken on (`evidence`: the gate's checks, the canary's stats)."""
    return {**decision, "evidence": evidence} if evidence else decision


def record_decision(store: FeedbackStore, decision: dict[str, Any]) -> dict[str, Any]:
    decision = {"at": time.time(), **decision}
    items = (store.get_state("decisions") or {}).get("items", [])
    store.set_state("decisions", {"items": [*items, decision][-MAX_DECISIONS:]})
    return decision


def decisions(store: FeedbackStore) -> list[dict[str, Any]]:
    return (store.get_state("decisions") or {}).get("items", [])


def _set_status(registry: AdapterRegistry, name: str | None, status: str, decision: dict | None = None) -> None:
    if name and name != "base":
        registry.set_status(name, status, decision)


def promote(
    store: FeedbackStore,
    registry: AdapterRegistry,
    adapter: str,
    *,
    force: bool = False,
    reason: str = "manual",
    evidence: Evidence = None,
) -> dict[str, Any]:
    """Make `adapter` current at once and for everyone; the old current becomes previous."""
    check_promotable(registry, adapter, force=force)
    state = store.routing_state()
    old_current, old_previous = state["current"], state["previous"]
    if old_current == adapter:
        return state
    previous = old_current or "base"
    canary = state["canary"] if state["canary"] and state["canary"].get("adapter") != adapter else None
    store.set_states(
        {
            "current": {"adapter": adapter, "since": time.time()},
            "previous": {"adapter": previous},
            "canary": canary,
        }
    )
    if old_previous not in (adapter, previous):
        _set_status(registry, old_previous, AdapterStatus.SUPERSEDED)
    _set_status(registry, previous, AdapterStatus.PREVIOUS)
    _set_status(registry, adapter, AdapterStatus.CURRENT)
    decision = {"action": "promote", "adapter": adapter, "from": old_current, "reason": reason}
    record_decision(store, _with(decision, evidence))
    return store.routing_state()


def rollback(
    store: FeedbackStore, registry: AdapterRegistry, *, reason: str = "manual", evidence: Evidence = None
) -> dict[str, Any]:
    """Serve `previous` again; the rolled-back adapter is marked rejected. 409 when there is no previous."""
    state = store.routing_state()
    if not state["previous"]:
        raise Conflict("there is no previous adapter to roll back to", code="no_previous")
    bad, back = state["current"], state["previous"]
    store.set_states({"current": {"adapter": back, "since": time.time()}, "previous": None})
    decision = _with({"action": "rollback", "adapter": bad, "to": back, "reason": reason}, evidence)
    _set_status(registry, bad, AdapterStatus.REJECTED, _with({"verdict": "rollback", "reasons": [reason]}, evidence))
    _set_status(registry, back, AdapterStatus.CURRENT)
    record_decision(store, decision)
    return store.routing_state()


def start_canary(
    store: FeedbackStore,
    registry: AdapterRegistry,
    adapter: str,
    fraction: float,
    *,
    force: bool = False,
    evidence: Evidence = None,
) -> dict[str, Any]:
    """Let `adapter` answer a sticky `fraction` of `current` traffic (users hashed to arms)."""
    if not 0 < fraction <= 1:
        raise Invalid(f"fraction must be in (0, 1], got {fraction}", code="invalid_fraction", param="fraction")
    check_promotable(registry, adapter, force=force)
    state = store.routing_state()
    if adapter == state["current"]:
        raise Conflict(f"{adapter} is already current", code="already_current")
    if state["canary"] and state["canary"].get("adapter") not in (None, adapter):
        raise Conflict(f"{state['canary']['adapter']} is already in canary: end it first", code="canary_running")
    store.set_states({"canary": {"adapter": adapter, "fraction": fraction, "started": time.time()}})
    _set_status(registry, adapter, AdapterStatus.CANARY)
    record_decision(store, _with({"action": "canary", "adapter": adapter, "fraction": fraction}, evidence))
    return store.routing_state()


def abort_canary(
    store: FeedbackStore, registry: AdapterRegistry, *, reason: str, evidence: Evidence = None
) -> dict[str, Any]:
    """Stop the canary and mark its adapter rejected (the live numbers turned against it)."""
    canary = store.routing_state()["canary"]
    if not canary:
        raise Conflict("no canary is running", code="no_canary")
    store.set_states({"canary": None})
    verdict = _with({"verdict": "rollback", "reasons": [reason]}, evidence)
    _set_status(registry, canary["adapter"], AdapterStatus.REJECTED, verdict)
    record_decision(store, _with({"action": "rollback", "adapter": canary["adapter"], "reason": reason}, evidence))
    return store.routing_state()


def prune(store: FeedbackStore, registry: AdapterRegistry, *, keep: int) -> list[str]:
    """Delete the files of adapters outside current, previous, canary and the newest `keep`; records stay."""
    state = store.routing_state()
    protected = {state["current"], state["previous"], (state["canary"] or {}).get("adapter")}
    records = sorted(registry.list(), key=lambda a: a.number, reverse=True)
    protected |= {a.name for a in records[:keep]}
    pruned = []
    for record in records:
        if record.name in protected or record.status == AdapterStatus.RETIRED:
            continue
        shutil.rmtree(registry.resolve_path(record.name), ignore_errors=True)
        registry.set_status(record.name, AdapterStatus.RETIRED)
        pruned.append(record.name)
    return pruned
