"""Typed FastAPI dependencies: the replica's runtime and the caller's keys, as routes declare them.

    async def route(runtime: Runtime, key: ApiKey) -> ...

A router whose every route needs a key sets it once: `APIRouter(dependencies=[NEEDS_API_KEY])`.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends

from serving.auth import require_admin, require_api_key
from serving.runtime import ServingRuntime, get_runtime

Runtime = Annotated[ServingRuntime, Depends(get_runtime)]
ApiKey = Annotated[str | None, Depends(require_api_key)]
NEEDS_API_KEY = Depends(require_api_key)
NEEDS_ADMIN_KEY = Depends(require_admin)
