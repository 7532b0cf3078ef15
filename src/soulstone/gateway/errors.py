"""Refusals as HTTP responses: the error table's body, its headers, the correlation ids."""

from __future__ import annotations

from collections.abc import Mapping

from aiohttp import web

from soulstone.dispatch.refusals import error_bytes, http_refusal, refusal_headers
from soulstone.errors import Refusal


def error_response(
    refusal: Refusal, correlation: Mapping[str, str], flat: bool = False
) -> web.Response:
    """The JSON response for a refusal, carrying the correlation headers."""
    return web.Response(
        body=error_bytes(refusal, flat), status=refusal.status, content_type="application/json",
        headers={**correlation, **refusal_headers(refusal)},
    )  # fmt: skip


def from_http(error: web.HTTPException) -> Refusal:
    """Map an aiohttp HTTP exception onto the error table."""
    return http_refusal(error.status, error.reason)
