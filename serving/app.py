"""The FastAPI app factory: serving's routes plus any extra routers a caller brings.

`serving` never imports `retrain` or `deploy`; the full app (files, fine-tuning, admin promote and
rollback) is assembled in `deploy/` by passing their routers here. The app holds no state of its own:
routes reach the replica's `ServingRuntime` through a dependency, so the same app object serves in a
Ray Serve replica and in a plain uvicorn process.
"""

from __future__ import annotations

from collections.abc import Sequence

from fastapi import APIRouter, FastAPI, Request
from starlette.middleware.base import BaseHTTPMiddleware

from serving import metrics
from serving.errors import error_response, install_error_handlers


class BodyLimit(BaseHTTPMiddleware):
    """413 for bodies over the limit, judged by Content-Length before anything is read."""

    def __init__(self, app, max_bytes: int) -> None:
        super().__init__(app)
        self.max_bytes = max_bytes

    async def dispatch(self, request: Request, call_next):
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_bytes):
            metrics.ERRORS.labels(type="too_large").inc()
            return error_response(413, f"request body over {self.max_bytes} bytes", code="request_too_large")
        response = await call_next(request)
        route = request.scope.get("route")
        metrics.REQUESTS.labels(route=getattr(route, "path", "unmatched"), status=str(response.status_code)).inc()
        return response


def create_app(extra_routers: Sequence[APIRouter] = (), *, max_request_bytes: int = 1_000_000) -> FastAPI:
    from serving import chat, feedback_routes, models_routes, ops_routes

    app = FastAPI(
        title="ratchet", version="0.1.0", description="OpenAI-compatible chat that learns from its users' feedback."
    )
    install_error_handlers(app)
    app.add_middleware(BodyLimit, max_bytes=max_request_bytes)
    for router in (chat.router, models_routes.router, feedback_routes.router, ops_routes.router, *extra_routers):
        app.include_router(router)
    return app
