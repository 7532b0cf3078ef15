"""Unbuffered pass-through to one engine: bytes in, bytes out, SSE chunk by chunk."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import aiohttp
from aiohttp import web
from yarl import URL

from soulstone.gateway.errors import GatewayError

STREAM_FAILED = (
    b'data: {"error":"ENGINE_FAILED","message":"the engine stopped in the middle of the '
    b'stream"}\n\ndata: [DONE]\n\n'
)
_UPSTREAM_ERRORS = (aiohttp.ClientError, OSError)


async def forward(
    request: web.Request,
    session: aiohttp.ClientSession,
    url: URL,
    body: bytes,
    headers: Mapping[str, str],
    stream: bool,
    correlation: Mapping[str, str],
    engine_failed: Callable[[], None],
) -> web.StreamResponse:
    """Send the body to the engine and pass its answer back without re-encoding it.

    A client that goes away cancels this handler, which closes the upstream
    connection: the engine sees the cancel. An engine that fails mid-stream
    ends the client's stream with an error event and `[DONE]`.
    """
    try:
        upstream = await session.post(url, data=body, headers=headers)
    except _UPSTREAM_ERRORS as error:
        engine_failed()
        raise GatewayError(
            502, "ENGINE_UNREACHABLE", f"the engine did not answer: {error}"
        ) from None
    try:
        content_type = upstream.headers.get("Content-Type", "application/json")
        if not stream or upstream.status != 200:
            try:
                data = await upstream.read()
            except _UPSTREAM_ERRORS:
                engine_failed()
                raise GatewayError(
                    502, "ENGINE_FAILED", "the engine stopped before it answered"
                ) from None
            return web.Response(
                body=data, status=upstream.status,
                headers={"Content-Type": content_type, **correlation},
            )  # fmt: skip
        response = web.StreamResponse(
            headers={"Content-Type": content_type, "Cache-Control": "no-cache", **correlation}
        )
        await response.prepare(request)
        content = upstream.content
        while True:
            try:
                chunk = await content.readany()
            except _UPSTREAM_ERRORS:
                engine_failed()
                await response.write(STREAM_FAILED)
                break
            if not chunk:
                break
            await response.write(chunk)
        await response.write_eof()
        return response
    finally:
        upstream.release()
