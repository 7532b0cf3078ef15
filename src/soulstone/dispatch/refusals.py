"""One table from a Refusal to what a caller sees: OpenAI's error shape or the flat one (pure).

HTTP bodies, stream error events, WebSocket frames and admin answers all
come from `error_document`; headers from `refusal_headers`.
"""

from __future__ import annotations

from typing import Any

import orjson

from soulstone.errors import Refusal

ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    409: "invalid_request_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
}

# Errors the HTTP layer raises itself, by status.
HTTP_CODES = {
    400: "BAD_REQUEST",
    404: "NOT_FOUND",
    405: "METHOD_NOT_ALLOWED",
    413: "PAYLOAD_TOO_LARGE",
}


def error_type(status: int) -> str:
    """OpenAI's `type` for an HTTP status."""
    if status >= 500:
        return "server_error"
    return ERROR_TYPES.get(status, "invalid_request_error")


def error_document(refusal: Refusal, flat: bool = False) -> dict[str, Any]:
    """The error body: `{"error": {"message", "type", "code", "param", ...}}`, or flat.

    Flat: `{"error": CODE, "message", ...extra}`, what agents that check
    `error == "TOKEN_BUDGET_EXCEEDED"` parse.
    """
    extra = refusal.extra
    if refusal.retry_after is not None:
        extra = {**extra, "retry_after": refusal.retry_after}
    if flat:
        return {"error": refusal.code, "message": refusal.message, **extra}
    error = {"message": refusal.message, "type": error_type(refusal.status),
             "code": refusal.code, "param": extra.get("param"), **extra}  # fmt: skip
    return {"error": error}


def error_bytes(refusal: Refusal, flat: bool = False) -> bytes:
    """The error body as JSON bytes."""
    return orjson.dumps(error_document(refusal, flat))


def refusal_headers(refusal: Refusal) -> dict[str, str]:
    """Headers a refusal adds to its response (Retry-After, WWW-Authenticate)."""
    if refusal.retry_after is None:
        return refusal.headers
    return {**refusal.headers, "Retry-After": str(refusal.retry_after)}


def http_refusal(status: int, reason: str | None) -> Refusal:
    """An error of the HTTP layer itself (bad request line, 404, 405, 413) as a Refusal."""
    code = HTTP_CODES.get(status, "HTTP_ERROR")
    return Refusal(status, code, reason or code)
