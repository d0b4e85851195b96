"""The FastAPI app factory: serving's routes plus any extra routers a caller brings.

`serving` never imports `retrain` or `deploy`; the full app (files, fine-tuning, admin promote and
rollback) is assembled in `deploy/` by passing their routers here. The app holds no state of its own:
routes reach the replica's `ServingRuntime` through a dependency, so the same app object serves in a
Ray Serve replica and in a plain uvicorn process.
"""

from __future__ import annotations

from collections.abc import Sequence

from fastapi import APIRouter, FastAPI
from starlette.exceptions import HTTPException

from serving import metrics
from serving.errors import error_response, install_error_handlers
from serving.openapi import document_errors


class BodyLimit:
    """413 for bodies over the limit: by Content-Length before anything is read, and by counting the bytes
    of a body sent without one (chunked), which is cut off once it passes the limit. Counts every request
    by route and status for /metrics."""

    def __init__(self, app, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_bytes):
            metrics.ERRORS.labels(type="too_large").inc()
            response = error_response(413, f"request body over {self.max_bytes} bytes", code="request_too_large")
            return await response(scope, receive, send)
        status, received = [500], [0]

        async def counted_receive():
            message = await receive()
            if message["type"] == "http.request":
                received[0] += len(message.get("body", b""))
                if received[0] > self.max_bytes:
                    metrics.ERRORS.labels(type="too_large").inc()
                    # FastAPI re-raises an HTTPException from the body read; the error handler shapes it
                    raise HTTPException(413, f"request body over {self.max_bytes} bytes")
            return message

        async def recorded_send(message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, counted_receive, recorded_send)
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")
            metrics.REQUESTS.labels(route=route, status=str(status[0])).inc()


def create_app(extra_routers: Sequence[APIRouter] = (), *, max_request_bytes: int = 1_000_000) -> FastAPI:
    from serving import chat, feedback_routes, models_routes, ops_routes

    app = FastAPI(
        title="ratchet", version="0.1.0", description="OpenAI-compatible chat that learns from its users' feedback."
    )
    install_error_handlers(app)
    app.add_middleware(BodyLimit, max_bytes=max_request_bytes)
    for router in (chat.router, models_routes.router, feedback_routes.router, ops_routes.router, *extra_routers):
        app.include_router(router)
    document_errors(app)
    return app
