"""One error table: refusals as `{"error": CODE, "message": ...}` with correlation headers."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson
from aiohttp import web

from soulstone.errors import SoulstoneError

REQUEST_ID = "X-Request-ID"
SESSION_ID = "X-Conveyance-Session-ID"


class GatewayError(SoulstoneError):
    """A refusal with its HTTP status, error code and extra body fields or headers."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        headers: Mapping[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = dict(headers or {})
        self.extra = extra


# HTTP errors aiohttp raises itself, by status.
HTTP_CODES = {
    400: "BAD_REQUEST",
    404: "NOT_FOUND",
    405: "METHOD_NOT_ALLOWED",
    413: "PAYLOAD_TOO_LARGE",
}


def error_response(error: GatewayError, correlation: Mapping[str, str]) -> web.Response:
    """The JSON response for a refusal, carrying the correlation headers."""
    body = {"error": error.code, "message": error.message, **error.extra}
    return web.Response(
        body=orjson.dumps(body),
        status=error.status,
        content_type="application/json",
        headers={**correlation, **error.headers},
    )


def from_http(error: web.HTTPException) -> GatewayError:
    """Map an aiohttp HTTP exception onto the error table."""
    code = HTTP_CODES.get(error.status, "HTTP_ERROR")
    return GatewayError(error.status, code, error.reason or code)
