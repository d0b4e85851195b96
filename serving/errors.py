"""Errors in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}`, never a stack trace.

Domain code raises the errors of feedback/errors.py (NotFound, Invalid, Conflict, Overloaded, Busy);
`install_error_handlers` maps each kind to its one status here (`DOMAIN_STATUS`), along with `APIError`
(for what only HTTP knows: auth, request size), FastAPI's validation errors (422 becomes 400, as OpenAI
answers), values the database refuses (400) and anything unexpected (500, logged, with no internals in the
body).
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DataError
from starlette.exceptions import HTTPException as StarletteHTTPException

from feedback.errors import Busy, Conflict, DomainError, Invalid, NotFound, Overloaded
from serving.protocol import ErrorDetail, ErrorResponse

log = logging.getLogger("ratchet.serving")

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    409: "conflict_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
    503: "server_error",
}


DOMAIN_STATUS: dict[type[DomainError], int] = {NotFound: 404, Invalid: 400, Conflict: 409, Overloaded: 429, Busy: 503}


def domain_status(error: DomainError) -> int:
    return next((status for kind, status in DOMAIN_STATUS.items() if isinstance(error, kind)), 400)


class APIError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.headers = status, message, param, code, headers

    def response(self) -> JSONResponse:
        return error_response(self.status, self.message, param=self.param, code=self.code, headers=self.headers)


def error_response(
    status: int,
    message: str,
    *,
    param: str | None = None,
    code: str | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    body = ErrorResponse(
        error=ErrorDetail(message=message, type=_TYPES.get(status, "invalid_request_error"), param=param, code=code)
    )
    return JSONResponse(body.model_dump(), status_code=status, headers=headers)


def as_response(error: APIError | DomainError) -> JSONResponse:
    """The OpenAI-shaped answer to an error of either kind (a stream reports it in-band with this body)."""
    if isinstance(error, APIError):
        return error.response()
    headers = {"Retry-After": f"{error.retry_after:g}"} if error.retry_after is not None else None
    return error_response(domain_status(error), error.message, param=error.param, code=error.code, headers=headers)


def model_not_found(name: str) -> NotFound:
    return NotFound(
        f"The model '{name}' does not exist: use current, base or a registered adapter (GET /v1/models)",
        param="model",
        code="model_not_found",
    )


def _validation_message(error: RequestValidationError) -> tuple[str, str | None]:
    first = error.errors()[0] if error.errors() else {}
    location = [str(part) for part in first.get("loc", ()) if part != "body"]
    param = ".".join(location) or None
    message = str(first.get("msg", "invalid request")).removeprefix("Value error, ")
    if first.get("type") == "json_invalid":
        return "the request body is not valid JSON", None
    if first.get("type") == "missing":
        return f"missing required parameter: '{param}'", param
    return (f"invalid value for '{param}': {message}" if param else message), param


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api_error(_request: Request, error: APIError) -> JSONResponse:
        return error.response()

    @app.exception_handler(DomainError)
    async def _domain(_request: Request, error: DomainError) -> JSONResponse:
        return as_response(error)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, error: RequestValidationError) -> JSONResponse:
        message, param = _validation_message(error)
        return error_response(400, message, param=param, code="invalid_value")

    @app.exception_handler(StarletteHTTPException)
    async def _http(_request: Request, error: StarletteHTTPException) -> JSONResponse:
        message = error.detail if isinstance(error.detail, str) else "request failed"
        if error.status_code == 404 and message == "Not Found":
            message = "no such route: see GET /openapi.json for the API"
        code = "request_too_large" if error.status_code == 413 else None
        return error_response(error.status_code, message, code=code, headers=getattr(error, "headers", None))

    @app.exception_handler(DataError)
    async def _unstorable(_request: Request, error: DataError) -> JSONResponse:
        # The database refused a value the request carried (PostgreSQL: NUL in text, a number out of range):
        # bad input, not a server error.
        reason = str(getattr(error, "orig", None) or "invalid data").splitlines()[0]
        return error_response(400, f"the database refused a value of this request: {reason}", code="invalid_value")

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, error: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(500, "internal server error; the server log has the details", code="internal_error")
