"""GET /health, GET /metrics, and the admin routes that load and unload adapters by registry name."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Response
from fastapi.responses import PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, Field

from serving.auth import require_admin
from serving.errors import APIError
from serving.runtime import ServingRuntime, get_runtime

router = APIRouter()


@router.get("/health")
async def health(runtime: ServingRuntime = Depends(get_runtime)) -> dict:
    """200 once the model is loaded and the API can serve (503, from get_runtime, before)."""
    return {"status": "ok", "model": runtime.settings.base_model_id, "adapters": runtime.engine.adapters()}


@router.get("/metrics", response_class=PlainTextResponse)
async def prometheus_metrics() -> Response:
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)


class AdapterAction(BaseModel):
    adapter: str = Field(min_length=1, max_length=128, pattern=r"^ft-\d{4,}(-[a-z0-9-]{1,40})?$")


@router.post("/admin/adapters/load", dependencies=[Depends(require_admin)])
async def load_adapter(body: AdapterAction, runtime: ServingRuntime = Depends(get_runtime)) -> dict:
    await runtime.ensure_adapter(body.adapter)
    return {"adapter": body.adapter, "loaded": True, "adapters": runtime.engine.adapters()}


@router.post("/admin/adapters/unload", dependencies=[Depends(require_admin)])
async def unload_adapter(body: AdapterAction, runtime: ServingRuntime = Depends(get_runtime)) -> dict:
    await runtime.checked_record(body.adapter)  # 404 model_not_found for names the registry lacks
    state = runtime.state
    in_use = {state.get("current"), state.get("previous"), (state.get("canary") or {}).get("adapter")}
    if body.adapter in in_use:
        raise APIError(
            409,
            f"{body.adapter} is in the serving state (current, previous or canary): promote or roll back first",
            code="adapter_in_use",
        )
    if body.adapter in runtime.engine.adapters():
        await runtime.engine.unload_adapter(body.adapter)
    return {"adapter": body.adapter, "loaded": False, "adapters": runtime.engine.adapters()}
