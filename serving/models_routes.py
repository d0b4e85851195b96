"""GET /v1/models and /v1/models/{id}: current, base and every servable registered adapter."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Depends

from serving.auth import require_api_key
from serving.errors import model_not_found
from serving.protocol import ModelCard, ModelList
from serving.runtime import ServingRuntime, get_runtime

router = APIRouter()


async def _cards(runtime: ServingRuntime) -> list[ModelCard]:
    started = int(runtime.started_at)
    adapters = await asyncio.to_thread(runtime.servable_adapters)
    return [ModelCard(id="current", created=started), ModelCard(id="base", created=started)] + [
        ModelCard(id=a.name, created=int(a.created)) for a in adapters
    ]


@router.get("/v1/models", response_model=ModelList)
async def list_models(
    _key: str | None = Depends(require_api_key), runtime: ServingRuntime = Depends(get_runtime)
) -> ModelList:
    return ModelList(data=await _cards(runtime))


@router.get("/v1/models/{model_id}", response_model=ModelCard)
async def get_model(
    model_id: str, _key: str | None = Depends(require_api_key), runtime: ServingRuntime = Depends(get_runtime)
) -> ModelCard:
    for card in await _cards(runtime):
        if card.id == model_id:
            return card
    raise model_not_found(model_id)
