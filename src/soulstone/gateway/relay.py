"""Writing a dispatched answer to an HTTP or WebSocket caller, with the write side bounded."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

from aiohttp import web

from soulstone.dispatch.call import Answer, Rejection
from soulstone.dispatch.events import Chunk, Failure
from soulstone.dispatch.path import Outcome, Stream
from soulstone.dispatch.refusals import error_bytes
from soulstone.errors import Refusal
from soulstone.gateway.errors import error_response
from soulstone.sse import SSEReader

SSE_DONE = b"data: [DONE]\n\n"
WS_DONE = "[DONE]"


class WriteWatch:
    """Closes the connection of a caller that stops reading: no write may wait `timeout` s.

    One timer, re-armed when it fires; each write costs two clock reads.
    """

    __slots__ = ("handle", "loop", "since", "timeout", "transport")

    def __init__(self, transport: asyncio.BaseTransport | None, timeout: float) -> None:
        self.loop = asyncio.get_running_loop()
        self.transport, self.timeout = transport, timeout
        self.since: float | None = None
        self.handle = self.loop.call_later(timeout, self._check)

    def _check(self) -> None:
        since = self.since
        if since is not None and self.loop.time() - since >= self.timeout:
            if self.transport is not None:
                # abort, not close: close waits for the unread buffer to drain, which a
                # stalled reader never lets happen; abort drops it and fails the write.
                # (uvloop's transports abort too, but are no asyncio.WriteTransport.)
                getattr(self.transport, "abort", self.transport.close)()
            return
        wait = self.timeout if since is None else self.timeout - (self.loop.time() - since)
        self.handle = self.loop.call_later(wait, self._check)

    def stop(self) -> None:
        """No more writes."""
        self.handle.cancel()


def whole_response(outcome: Answer | Rejection, correlation: Mapping[str, str]) -> web.Response:
    """An Answer or a Rejection as an HTTP response with the correlation headers."""
    if isinstance(outcome, Rejection):
        return error_response(outcome.refusal, correlation, outcome.flat)
    return web.Response(body=outcome.body, status=outcome.status,
                        headers={"Content-Type": outcome.content_type, **correlation})  # fmt: skip


async def write_sse(request: web.Request, stream: Stream, correlation: Mapping[str, str],
                    write_timeout: float) -> web.StreamResponse:  # fmt: skip
    """Relay a stream's events as server-sent events, unbuffered; errors end with [DONE]."""
    async with stream:
        headers = {"Content-Type": stream.content_type, "Cache-Control": "no-cache"}
        response = web.StreamResponse(headers={**headers, **correlation})
        await response.prepare(request)
        watch = WriteWatch(request.transport, write_timeout)
        loop = watch.loop
        try:
            async for event in stream:
                if isinstance(event, Chunk):
                    watch.since = loop.time()
                    await response.write(event.data)  # a caller gone away raises: nothing to tell
                    watch.since = None
                elif isinstance(event, Failure):
                    data = b"data: " + error_bytes(event.refusal, stream.flat) + b"\n\n" + SSE_DONE
                    watch.since = loop.time()
                    await response.write(data)
                    watch.since = None
            await response.write_eof()
        finally:
            watch.stop()
    return response


async def write_frames(
    ws: web.WebSocketResponse, transport: asyncio.BaseTransport | None, outcome: Outcome,
    flat: bool, write_timeout: float,
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
        watch = WriteWatch(transport, write_timeout)
        loop = watch.loop
        reader = SSEReader()
        try:
            async for event in outcome:
                if isinstance(event, Chunk):
                    for whole in reader.feed(event.data):
                        if whole.data is None:
                            continue  # a comment or keep-alive: nothing to send
                        watch.since = loop.time()
                        await ws.send_str(whole.data.decode(errors="replace"))
                        watch.since = None
                elif isinstance(event, Failure):
                    await ws.send_str(error_bytes(event.refusal, outcome.flat).decode())
                    await ws.send_str(WS_DONE)
        finally:
            watch.stop()
