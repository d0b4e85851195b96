"""API keys and the admin key, as FastAPI dependencies.

Chat, feedback, files and fine-tuning routes need `Authorization: Bearer <key>` once any API key exists
(none: they are open, and the server binds to 127.0.0.1 by default). Admin routes always need the
workspace's admin key; a valid API key there is 403, anything else 401. Key lookups are cached briefly
so a request does not cost a database round trip. The dependencies are `async`: a cached answer costs no
worker-thread hop (FastAPI runs a plain `def` dependency in its thread pool), and a lookup that does reach
the store runs in a thread so the event loop never waits on the database.
"""

from __future__ import annotations

import asyncio
import hmac
import time

from fastapi import Depends, Request

from serving.errors import APIError
from serving.runtime import ServingRuntime, get_runtime

CACHE_SECONDS = 5.0
_cache: dict[str, tuple[float, str | None]] = {}  # key -> (expires, key id or None when invalid)
_any_keys: list[float | bool] = [0.0, False]  # (expires, whether any active key exists)


def _bearer(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


async def _keys_exist(runtime: ServingRuntime) -> bool:
    now = time.monotonic()
    if now >= _any_keys[0]:
        keys = await asyncio.to_thread(runtime.store.list_api_keys)
        _any_keys[:] = [now + CACHE_SECONDS, any(k.revoked is None for k in keys)]
    return bool(_any_keys[1])


async def _key_id(runtime: ServingRuntime, token: str) -> str | None:
    now = time.monotonic()
    cached = _cache.get(token)
    if cached and cached[0] > now:
        return cached[1]
    record = await asyncio.to_thread(runtime.store.verify_api_key, token)
    key_id = record.id if record is not None else None
    if len(_cache) > 10_000:
        _cache.clear()
    _cache[token] = (now + CACHE_SECONDS, key_id)
    return key_id


def _is_admin(runtime: ServingRuntime, token: str | None) -> bool:
    return token is not None and hmac.compare_digest(token.encode(), runtime.admin_key.encode())


async def require_api_key(request: Request, runtime: ServingRuntime = Depends(get_runtime)) -> str | None:
    """The calling key's id (None when the routes are open, or for the admin key)."""
    token = _bearer(request)
    if _is_admin(runtime, token):
        return None
    if not await _keys_exist(runtime):
        return await _key_id(runtime, token) if token else None
    if token is None:
        raise APIError(401, "missing API key: send 'Authorization: Bearer <key>'", code="invalid_api_key")
    key_id = await _key_id(runtime, token)
    if key_id is None:
        raise APIError(401, "invalid or revoked API key", code="invalid_api_key")
    return key_id


async def require_admin(request: Request, runtime: ServingRuntime = Depends(get_runtime)) -> None:
    token = _bearer(request)
    if _is_admin(runtime, token):
        return
    if token is not None and await _key_id(runtime, token) is not None:
        raise APIError(
            403,
            "this API key may not use admin routes: use the admin key (<home>/admin.key)",
            code="insufficient_permissions",
        )
    raise APIError(
        401, "admin routes need 'Authorization: Bearer <admin key>' (<home>/admin.key)", code="invalid_api_key"
    )
