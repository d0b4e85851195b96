"""Admin routes of the full app (admin key): status, promote, rollback, and the canary.

Each change first makes THIS replica load and check the adapter (sha256, safetensors, base model, rank,
a smoke generation: ServingRuntime.check_servable, once per load), then records the new state in the
store (one transaction), switches this replica, and rings every other replica to follow the stored
state (serving/fleet.py). The call answers once every live replica serves the new state, or after
`state_push_timeout_seconds` with the laggards named in `replicas`; so a request started after it
returned is answered by the new state. Requests already running finish on the adapter they started with.

    GET  /admin/status
    POST /admin/promote        {"adapter": "ft-0004", "force": false}   immediate and full
    POST /admin/rollback       {}                                        to previous; 409 when none
    POST /admin/canary         {"adapter": "ft-0004", "fraction": 0.2}   a sticky share of current traffic
    POST /admin/canary/abort   {"reason": "..."}                         the canary's adapter is rejected

Each change takes an optional `evidence` object, the numbers the decision was taken on (the loop sends
the gate's checks or the canary's stats), recorded with the decision (deploy/promotion.py).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, Field

from deploy import promotion
from deploy.status import status_object
from serving.deps import NEEDS_ADMIN_KEY, Runtime
from serving.runtime import ServingRuntime

router = APIRouter(prefix="/admin", tags=["admin"], dependencies=[NEEDS_ADMIN_KEY])
ADAPTER_NAME = r"^(base|ft-\d{4,}(-[a-z0-9-]{1,40})?)$"


EVIDENCE = Field(
    None, description="The numbers behind the decision (the gate's checks, the canary's stats), recorded with it."
)


class ReasonBody(BaseModel):
    reason: str = Field("manual", max_length=500)
    evidence: dict[str, Any] | None = EVIDENCE


class PromoteBody(ReasonBody):
    adapter: str = Field(min_length=1, max_length=128, pattern=ADAPTER_NAME)
    force: bool = False


class CanaryBody(PromoteBody):
    fraction: float = Field(0.2, gt=0, le=1)


async def _switch(runtime: ServingRuntime) -> dict:
    """Serve the state just stored on this replica, then on all; prune old adapters' files; answer with the
    status and how the replicas followed."""
    started = time.monotonic()
    await runtime.sync_state()
    replicas = await runtime.fleet.broadcast(runtime.settings.state_push_timeout_seconds)
    replicas["seconds"] = round(time.monotonic() - started, 3)
    pruned = await asyncio.to_thread(
        promotion.prune, runtime.store, runtime.registry, keep=runtime.settings.keep_adapters
    )
    for name in pruned:
        if name in runtime.engine.adapters():
            await runtime.engine.unload_adapter(name)
    return {**await _status(runtime), "replicas": replicas}


async def _plan(runtime: ServingRuntime, change: Callable[..., Any], *args: Any, **options: Any) -> None:
    """Record a change of who serves (a deploy/promotion.py function) off the event loop."""
    await asyncio.to_thread(change, runtime.store, runtime.registry, *args, **options)


async def _status(runtime: ServingRuntime) -> dict:
    return await asyncio.to_thread(
        status_object, runtime.settings, runtime.store, loaded_adapters=runtime.engine.adapters()
    )


async def _checked(runtime: ServingRuntime, body: PromoteBody) -> None:
    await asyncio.to_thread(promotion.check_promotable, runtime.registry, body.adapter, force=body.force)
    if body.adapter != "base":
        await runtime.check_servable(body.adapter)


@router.get("/status")
async def admin_status(runtime: Runtime) -> dict:
    return await _status(runtime)


@router.post("/promote")
async def admin_promote(runtime: Runtime, body: PromoteBody) -> dict:
    await _checked(runtime, body)
    await _plan(runtime, promotion.promote, body.adapter, force=body.force, reason=body.reason, evidence=body.evidence)
    return await _switch(runtime)


@router.post("/rollback")
async def admin_rollback(runtime: Runtime, body: ReasonBody | None = None) -> dict:
    body = body or ReasonBody()
    await _plan(runtime, promotion.rollback, reason=body.reason, evidence=body.evidence)
    return await _switch(runtime)


@router.post("/canary")
async def admin_canary(runtime: Runtime, body: CanaryBody) -> dict:
    await _checked(runtime, body)
    await _plan(runtime, promotion.start_canary, body.adapter, body.fraction, force=body.force, evidence=body.evidence)
    return await _switch(runtime)


@router.post("/canary/abort")
async def admin_canary_abort(runtime: Runtime, body: ReasonBody) -> dict:
    await _plan(runtime, promotion.abort_canary, reason=body.reason, evidence=body.evidence)
    return await _switch(runtime)
