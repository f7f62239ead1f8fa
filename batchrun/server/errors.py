"""Errors as Anthropic's API answers them: ``{"type": "error", "error": {"type", "message"},
"request_id"}`` with the status code the official SDK maps to its exception classes (400
BadRequestError, 401 AuthenticationError, 404 NotFoundError, 413 RequestTooLargeError...).

:class:`ApiError` is what a route raises for anything a client caused; batchrun's own
errors are translated once, in :func:`api_error_of`. Anything else is a bug: it is logged
with its traceback and answered with a bare 500, never with the traceback.
"""

from __future__ import annotations

import secrets
import string
from typing import Final

import orjson

from batchrun.errors import BatchNotFoundError, BatchrunError, DatabaseError
from batchrun.records import error_body

_ALPHABET = string.ascii_letters + string.digits

# Status code → Anthropic's error type for it.
ERROR_TYPES: Final = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    503: "api_error",
}


class ApiError(Exception):
    """A request the server refuses: its status code, Anthropic error type and message."""

    def __init__(self, status: int, message: str, error_type: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.error_type = error_type or ERROR_TYPES.get(status, "invalid_request_error")


def new_request_id() -> str:
    """A request id in Anthropic's style, for the body and the ``request-id`` header."""
    return "req_" + "".join(secrets.choice(_ALPHABET) for _ in range(24))


def error_json(error: ApiError, request_id: str) -> bytes:
    """The error body of ``error``."""
    return orjson.dumps(error_body(error.error_type, error.message, request_id))


def api_error_of(exc: BatchrunError) -> ApiError:
    """batchrun's error as the API answers it: an unknown batch is 404, a store that cannot
    be reached is 503 (the SDK retries it), everything else the client must fix is 400."""
    if isinstance(exc, BatchNotFoundError):
        return ApiError(404, str(exc).split(";")[0])
    if isinstance(exc, DatabaseError):
        return ApiError(503, "the job store cannot be reached right now; retry shortly")
    return ApiError(400, str(exc))
