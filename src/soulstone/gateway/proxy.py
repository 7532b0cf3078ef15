"""Unbuffered pass-through to one engine: bytes in, bytes out, SSE chunk by chunk."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable, Mapping

import aiohttp
from aiohttp import web
from yarl import URL

from soulstone.gateway.errors import GatewayError

STREAM_FAILED = (
    b'data: {"error":"ENGINE_FAILED","message":"the engine stopped in the middle of the '
    b'stream"}\n\ndata: [DONE]\n\n'
)
STREAM_TIMED_OUT = (
    b'data: {"error":"COMPLETION_TIMEOUT","message":"the engine sent nothing for too long"}'
    b"\n\ndata: [DONE]\n\n"
)
_UPSTREAM_ERRORS = (aiohttp.ClientError, OSError)
_TOTAL_TOKENS = re.compile(rb'"total_tokens"\s*:\s*(\d+)')
_TAIL_BYTES = 4096


def total_tokens(data: bytes) -> int | None:
    """The last `usage.total_tokens` in a body or stream tail, without parsing the JSON."""
    matches = _TOTAL_TOKENS.findall(data)
    return int(matches[-1]) if matches else None


class Exchange:
    """What the proxy learned about one exchange: tokens used and events streamed."""

    __slots__ = ("events", "tokens")

    def __init__(self) -> None:
        self.tokens: int | None = None
        self.events = 0


async def forward(
    request: web.Request,
    session: aiohttp.ClientSession,
    url: URL,
    body: bytes,
    headers: Mapping[str, str],
    stream: bool,
    correlation: Mapping[str, str],
    engine_failed: Callable[[], None],
    timeout: float,
    exchange: Exchange,
) -> web.StreamResponse:
    """Send the body to the engine and pass its answer back without re-encoding it.

    A client that goes away cancels this handler, which closes the upstream
    connection: the engine sees the cancel. An engine that fails mid-stream
    ends the client's stream with an error event and `[DONE]`. `timeout`
    bounds a whole answer, and for a stream the wait for each chunk; the
    upstream request is cancelled when it runs out (504 before the first byte).
    """
    try:
        async with asyncio.timeout(timeout):
            upstream = await session.post(url, data=body, headers=headers)
    except TimeoutError:
        raise GatewayError(504, "COMPLETION_TIMEOUT",
                           f"the engine did not answer within {timeout:g} s") from None  # fmt: skip
    except _UPSTREAM_ERRORS as error:
        engine_failed()
        raise GatewayError(
            502, "ENGINE_UNREACHABLE", f"the engine did not answer: {error}"
        ) from None
    try:
        content_type = upstream.headers.get("Content-Type", "application/json")
        if not stream or upstream.status != 200:
            try:
                async with asyncio.timeout(timeout):
                    data = await upstream.read()
            except TimeoutError:
                message = f"the engine did not finish within {timeout:g} s"
                raise GatewayError(504, "COMPLETION_TIMEOUT", message) from None
            except _UPSTREAM_ERRORS:
                engine_failed()
                raise GatewayError(
                    502, "ENGINE_FAILED", "the engine stopped before it answered"
                ) from None
            exchange.tokens = total_tokens(data[-_TAIL_BYTES:])
            return web.Response(
                body=data, status=upstream.status,
                headers={"Content-Type": content_type, **correlation},
            )  # fmt: skip
        response = web.StreamResponse(
            headers={"Content-Type": content_type, "Cache-Control": "no-cache", **correlation}
        )
        await response.prepare(request)
        content = upstream.content
        loop = asyncio.get_running_loop()
        tail = b""
        try:
            async with asyncio.timeout(timeout) as idle:
                while True:
                    try:
                        chunk = await content.readany()
                    except _UPSTREAM_ERRORS:
                        engine_failed()
                        await response.write(STREAM_FAILED)
                        break
                    if not chunk:
                        break
                    idle.reschedule(loop.time() + timeout)
                    exchange.events += chunk.count(b"data:")
                    tail = (tail + chunk)[-_TAIL_BYTES:]
                    await response.write(chunk)  # a client gone away raises: nothing to tell
        except TimeoutError:
            await response.write(STREAM_TIMED_OUT)
        exchange.tokens = total_tokens(tail)
        await response.write_eof()
        return response
    finally:
        upstream.release()
