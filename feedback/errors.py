"""Domain errors: what went wrong, in words a caller can act on, with no HTTP in them.

Every package raises these (the store, the runtime, training, promotion); one mapping in serving/errors.py
turns each kind into an OpenAI-shaped HTTP error, so one condition has one status everywhere, and the CLI
prints the message as its one-line reason. `code` and `param` are the machine-readable parts of the answer.

    NotFound    404   an unknown model, file, job or adapter
    Invalid     400   a value the request may not carry
    Conflict    409   a request that clashes with the current state (a base model mismatch, a finished job)
    Overloaded  429   too many requests right now (retry_after seconds)
    Busy        503   a resource is briefly unavailable (retry_after seconds)
"""

from __future__ import annotations


class DomainError(Exception):
    code: str | None = None  # a subclass may set its own defaults
    param: str | None = None

    def __init__(
        self, message: str, *, code: str | None = None, param: str | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(message)
        self.message, self.retry_after = message, retry_after
        self.code = code if code is not None else type(self).code
        self.param = param if param is not None else type(self).param


class NotFound(DomainError, LookupError):
    def __str__(self) -> str:  # LookupError's str() would quote the message
        return self.message


class Invalid(DomainError, ValueError):
    pass


class Conflict(DomainError):
    pass


class Overloaded(DomainError):
    pass


class Busy(DomainError):
    pass
