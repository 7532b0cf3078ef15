"""Writing a dispatched answer to an HTTP or WebSocket caller, with the write side bounded."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping

from aiohttp import web

from soulstone.dispatch.call import SERVED_BY_HEADER, Answer, Rejection
from soulstone.dispatch.events import Chunk, Failure
from soulstone.dispatch.path import Outcome
from soulstone.dispatch.refusals import error_bytes
from soulstone.dispatch.stream import Stream
from soulstone.errors import Refusal
from soulstone.gateway.errors import error_response
from soulstone.sse import SSEReader

SSE_DONE = b"data: [DONE]\n\n"
WS_DONE = "[DONE]"


def _abort(transport: asyncio.BaseTransport | None) -> Callable[[], None] | None:
    """How to cut a caller that stopped reading (None without a transport).

    Abort, not close: close waits for the unread buffer to drain, which never
    happens. (uvloop's transports abort too, but are no asyncio.WriteTransport.)
    """
    if transport is None:
        return None
    abort: Callable[[], None] = getattr(transport, "abort", transport.close)
    return abort


def whole_response(outcome: Answer | Rejection, correlation: Mapping[str, str]) -> web.Response:
    """An Answer or a Rejection as an HTTP response with the correlation headers."""
    if isinstance(outcome, Rejection):
        return error_response(outcome.refusal, correlation, outcome.flat)
    headers = {"Content-Type": outcome.content_type, **correlation}
    if outcome.served_by is not None:  # a fallback soulstone answered
        headers[SERVED_BY_HEADER] = outcome.served_by
    return web.Response(body=outcome.body, status=outcome.status, headers=headers)


async def write_sse(request: web.Request, stream: Stream,
                    correlation: Mapping[str, str]) -> web.StreamResponse:  # fmt: skip
    """Relay a stream's events as server-sent events, unbuffered; errors end with [DONE]."""
    async with stream:
        headers = {"Content-Type": stream.content_type, "Cache-Control": "no-cache"}
        if stream.served_by is not None:  # a fallback soulstone streams
            headers[SERVED_BY_HEADER] = stream.served_by
        response = web.StreamResponse(headers={**headers, **correlation})
        await response.prepare(request)
        progress = stream.progress
        progress.on_stall = _abort(request.transport)
        async for event in stream:
            if isinstance(event, Chunk):
                progress.writing = True
                await response.write(event.data)  # a caller gone away raises: nothing to tell
                progress.writing = False
            elif isinstance(event, Failure):
                data = b"data: " + error_bytes(event.refusal, stream.flat) + b"\n\n" + SSE_DONE
                await response.write(data)
        await response.write_eof()
    return response


async def write_frames(
    ws: web.WebSocketResponse, transport: asyncio.BaseTransport | None, outcome: Outcome,
    flat: bool,
) -> None:  # fmt: skip
    """One request's answer as WebSocket text frames, always ending with `[DONE]`."""
    if isinstance(outcome, Rejection):
        await ws.send_str(error_bytes(outcome.refusal, outcome.flat).decode())
        await ws.send_str(WS_DONE)
        return
    if isinstance(outcome, Answer):  # the engine refused: its status and words
        text = outcome.body[:2000].decode(errors="replace")
        refusal = Refusal(outcome.status, "ENGINE_ERROR", text)
        await ws.send_str(error_bytes(refusal, flat).decode())
        await ws.send_str(WS_DONE)
        return
    async with outcome:
        progress = outcome.progress
        progress.on_stall = _abort(transport)
        reader = SSEReader()
        async for event in outcome:
            if isinstance(event, Chunk):
                for whole in reader.feed(event.data):
                    if whole.data is None:
                        continue  # a comment or keep-alive: nothing to send
                    progress.writing = True
                    await ws.send_str(whole.data.decode(errors="replace"))
                    progress.writing = False
            elif isinstance(event, Failure):
                await ws.send_str(error_bytes(event.refusal, outcome.flat).decode())
                await ws.send_str(WS_DONE)
