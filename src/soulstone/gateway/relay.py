"""Writing a dispatched answer to an HTTP or WebSocket caller, with the write side bounded."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

from aiohttp import web

from soulstone.dispatch.call import Answer, Rejection
from soulstone.dispatch.events import Chunk, Failure
from soulstone.dispatch.path import Outcome
from soulstone.dispatch.refusals import error_bytes
from soulstone.dispatch.stream import Stream
from soulstone.errors import Refusal
from soulstone.gateway.errors import error_response
from soulstone.sse import SSEReader

SSE_DONE = b"data: [DONE]\n\n"
WS_DONE = "[DONE]"


class WriteWatch:
    """Aborts the connection of a caller that stops reading: no write may wait `timeout` s.

    The caller brackets each write with `begin()` / `end()` (two attribute
    updates, no clock read); one timer, re-armed every `timeout` seconds,
    aborts when the same write was pending at two checks in a row.
    """

    __slots__ = ("handle", "loop", "pending", "seen", "timeout", "transport", "writes")

    def __init__(self, transport: asyncio.BaseTransport | None, timeout: float) -> None:
        self.loop = asyncio.get_running_loop()
        self.transport, self.timeout = transport, timeout
        self.writes = 0  # writes begun
        self.pending = False  # the last one has not returned yet
        self.seen = -1  # the write pending at the last check
        self.handle = self.loop.call_later(timeout, self._check)

    def begin(self) -> None:
        """A write starts."""
        self.writes += 1
        self.pending = True

    def end(self) -> None:
        """The write returned."""
        self.pending = False

    def _check(self) -> None:
        if self.pending and self.seen == self.writes:
            if self.transport is not None:
                # abort, not close: close waits for the unread buffer to drain, which a
                # stalled reader never lets happen; abort drops it and fails the write.
                # (uvloop's transports abort too, but are no asyncio.WriteTransport.)
                getattr(self.transport, "abort", self.transport.close)()
            return
        self.seen = self.writes if self.pending else -1
        self.handle = self.loop.call_later(self.timeout, self._check)

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
        try:
            async for event in stream:
                if isinstance(event, Chunk):
                    watch.begin()
                    await response.write(event.data)  # a caller gone away raises: nothing to tell
                    watch.end()
                elif isinstance(event, Failure):
                    data = b"data: " + error_bytes(event.refusal, stream.flat) + b"\n\n" + SSE_DONE
                    watch.begin()
                    await response.write(data)
                    watch.end()
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
        reader = SSEReader()
        try:
            async for event in outcome:
                if isinstance(event, Chunk):
                    for whole in reader.feed(event.data):
                        if whole.data is None:
                            continue  # a comment or keep-alive: nothing to send
                        watch.begin()
                        await ws.send_str(whole.data.decode(errors="replace"))
                        watch.end()
                elif isinstance(event, Failure):
                    await ws.send_str(error_bytes(event.refusal, outcome.flat).decode())
                    await ws.send_str(WS_DONE)
        finally:
            watch.stop()
