"""The status object (docs/api.md, docs/cli.md): what `GET /admin/status` and `ratchet status --json` both return.

{"current", "previous", "canary": null | {"adapter", "fraction", "started", "ratings": {arm: {up, n}},
                                          "test": {"action", "reason", "stats"} (deploy/canary.py's decide)},
 "engine", "base_model", "loop": {"state", "last_decision", ...}, "counts": {... as data stats ...},
 "decisions": [the last ten, newest last]}

A decision carries `evidence`, the numbers it was taken on: {"gate": [the gate's checks]} for an offline
verdict, {"canary": the canary's stats} for a live one; `explain` puts them in lines for a person.
"""

from __future__ import annotations

from typing import Any

from deploy.canary import arm_counts, decide
from deploy.promotion import decisions
from eval.gate import numbers_text
from feedback.store import FeedbackStore
from ratchet.settings import Settings


def status_object(settings: Settings, store: FeedbackStore, **live: Any) -> dict[str, Any]:
    state = store.routing_state()
    canary = state["canary"]
    if canary:
        counts = arm_counts(store, canary)
        canary = {**canary, "ratings": counts, "test": decide(counts, settings)}
    loop = store.get_state("loop") or {"state": "stopped", "last_decision": None}
    return {
        "current": state["current"],
        "previous": state["previous"],
        "canary": canary,
        "engine": settings.engine,
        "base_model": settings.base_model_id,
        "loop": loop,
        "counts": store.stats(),
        "decisions": decisions(store)[-10:],
        **live,
    }


def explain(decision: dict[str, Any]) -> list[str]:
    """The numbers behind a decision, a line each: every gate check, or the canary's test."""
    evidence = decision.get("evidence") or {}
    lines = [
        f"{'ok' if check['passed'] else 'FAILED'} {check['name']}: {numbers_text(check['numbers'])}"
        + (f" ({check['test']})" if check.get("test") else "")
        for check in evidence.get("gate", [])
    ]
    canary = evidence.get("canary")
    if canary:
        numbers = {k: v for k, v in canary.items() if k != "test"}
        lines.append(f"canary: {numbers_text(numbers)}" + (f" ({canary['test']})" if canary.get("test") else ""))
    return lines
