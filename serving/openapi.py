"""The OpenAPI document says what the server really answers: OpenAI's error shape, not FastAPI's 422.

FastAPI documents a 422 `HTTPValidationError` on every route with a body or parameters; ratchet answers
those as 400 in OpenAI's shape (serving/errors.py), along with the other errors docs/api.md lists. This
rewrites the generated document once: 422 becomes 400, and each operation lists the error statuses it
can answer, inferred from what it depends on (API key, admin key, the replica's runtime), every one with
the `ErrorResponse` schema and `Retry-After` on 429 and 503. Chat completions may also answer
`text/event-stream` (`stream: true`): events of `ChatCompletionChunk` JSON (or an in-band error) and `[DONE]`.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.routing import APIRoute
from pydantic import BaseModel

from serving.protocol import ChatCompletionChunk, ErrorResponse

ERROR_DESCRIPTIONS = {
    400: "invalid request (a bad value, missing parameter or unreadable JSON)",
    401: "missing or invalid key",
    403: "the key may not use this route",
    404: "no such model, completion, file or job",
    409: "conflicts with the current state (e.g. an adapter that fails its checks)",
    413: "request body too large",
    429: "over capacity or over a rate limit: retry after Retry-After seconds",
    503: "not ready yet or temporarily unable: retry after Retry-After seconds",
}
ALWAYS = {400, 413}  # validation and the body limit apply to every route
WITH_RUNTIME = {404, 409, 429, 503}  # what a route that reaches the replica's runtime may add


# One server-sent event of a chat stream (`stream: true`): a chunk, an in-band error, or the final [DONE].
STREAM_EVENT = {
    "type": "object",
    "required": ["data"],
    "properties": {
        "data": {
            "anyOf": [
                {"const": "[DONE]"},
                {
                    "type": "string",
                    "contentMediaType": "application/json",
                    "contentSchema": {
                        "anyOf": [
                            {"$ref": "#/components/schemas/ChatCompletionChunk"},
                            {"$ref": "#/components/schemas/ErrorResponse"},
                        ]
                    },
                },
            ]
        }
    },
}


def _add_schema(schemas: dict[str, Any], model: type[BaseModel]) -> None:
    """`model` and the models it refers to, as components/schemas entries."""
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
    schemas.update(schema.pop("$defs", {}))
    schemas[model.__name__] = schema


def _dependency_calls(route: APIRoute) -> set[str]:
    calls, stack = set(), [route.dependant]
    while stack:
        dependant = stack.pop()
        if dependant.call is not None:
            calls.add(getattr(dependant.call, "__name__", ""))
        stack.extend(dependant.dependencies)
    return calls


def _error_statuses(route: APIRoute) -> set[int]:
    calls = _dependency_calls(route)
    statuses = set(ALWAYS)
    if "get_runtime" in calls:
        statuses |= WITH_RUNTIME
    if "require_api_key" in calls:
        statuses.add(401)
    if "require_admin" in calls:
        statuses |= {401, 403}
    return statuses


def _error_response(status: int) -> dict[str, Any]:
    response: dict[str, Any] = {
        "description": ERROR_DESCRIPTIONS[status],
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}},
    }
    if status in (429, 503):
        response["headers"] = {
            "Retry-After": {"description": "seconds to wait before retrying", "schema": {"type": "string"}}
        }
    return response


def document_errors(app: FastAPI) -> None:
    """Make `app.openapi()` describe ratchet's error responses (call after every router is included)."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        document = generate()
        schemas = document.setdefault("components", {}).setdefault("schemas", {})
        for model in (ErrorResponse, ChatCompletionChunk):
            _add_schema(schemas, model)
        for name in ("HTTPValidationError", "ValidationError"):
            schemas.pop(name, None)
        routes = {
            (route.path, method.lower()): route
            for route in app.routes
            if isinstance(route, APIRoute)
            for method in route.methods
        }
        for path, operations in document.get("paths", {}).items():
            for method, operation in operations.items():
                route = routes.get((path, method))
                if route is None:
                    continue
                responses = operation.setdefault("responses", {})
                responses.pop("422", None)
                for status in sorted(_error_statuses(route)):
                    responses.setdefault(str(status), _error_response(status))
                if path == "/v1/chat/completions" and "200" in responses:
                    responses["200"].setdefault("content", {})["text/event-stream"] = {"schema": STREAM_EVENT}
        app.openapi_schema = document
        return document

    app.openapi = openapi
