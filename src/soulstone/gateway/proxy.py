"""Unbuffered pass-through to one engine: bytes in, bytes out, SSE chunk by chunk."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable, Mapping

import aiohttp
from aiohttp import web
from yarl import URL

from soulstone.gateway.errors import GatewayError
from soulstone.tools.stream import ToolStream

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


class _Deadline:
    """Cancels the current task once `timeout` seconds pass (one timer, no context object)."""

    __slots__ = ("fired", "handle", "task")

    def __init__(self, loop: asyncio.AbstractEventLoop, timeout: float) -> None:
        self.task = asyncio.current_task()
        self.fired = False
        self.handle = loop.call_later(timeout, self._fire)

    def _fire(self) -> None:
        self.fired = True
        if self.task is not None:
            self.task.cancel()

    def stop(self) -> None:
        self.handle.cancel()


class _Idle:
    """Closes the upstream when a stream makes no progress for `timeout` seconds.

    One timer per stream, re-armed only when it fires: each chunk costs a
    clock read, not a timer reschedule.
    """

    __slots__ = ("fired", "handle", "last", "loop", "timeout", "upstream")

    def __init__(
        self, loop: asyncio.AbstractEventLoop, timeout: float, upstream: aiohttp.ClientResponse
    ) -> None:
        self.loop, self.timeout, self.upstream = loop, timeout, upstream
        self.last = loop.time()
        self.fired = False
        self.handle = loop.call_later(timeout, self._check)

    def _check(self) -> None:
        idle = self.loop.time() - self.last
        if idle < self.timeout:
            self.handle = self.loop.call_later(self.timeout - idle, self._check)
            return
        self.fired = True
        self.upstream.close()  # the pending read fails at once

    def stop(self) -> None:
        self.handle.cancel()


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
    transform: ToolStream | None = None,
) -> web.StreamResponse:
    """Send the body to the engine and pass its answer back without re-encoding it.

    A client that goes away cancels this handler, which closes the upstream
    connection: the engine sees the cancel. An engine that fails mid-stream
    ends the client's stream with an error event and `[DONE]`. `timeout`
    bounds a whole answer, and for a stream the wait for each chunk; the
    upstream request is cancelled when it runs out (504 before the first byte).
    """
    loop = asyncio.get_running_loop()
    deadline = _Deadline(loop, timeout)
    try:
        try:
            upstream = await session.post(url, data=body, headers=headers)
        except _UPSTREAM_ERRORS as error:
            engine_failed()
            raise GatewayError(
                502, "ENGINE_UNREACHABLE", f"the engine did not answer: {error}"
            ) from None
        if not stream or upstream.status != 200:
            try:
                data = await upstream.read()
            except _UPSTREAM_ERRORS:
                engine_failed()
                raise GatewayError(
                    502, "ENGINE_FAILED", "the engine stopped before it answered"
                ) from None
            finally:
                upstream.release()
            exchange.tokens = total_tokens(data[-_TAIL_BYTES:])
            content_type = upstream.headers.get("Content-Type", "application/json")
            return web.Response(
                body=data, status=upstream.status,
                headers={"Content-Type": content_type, **correlation},
            )  # fmt: skip
    except asyncio.CancelledError:
        if deadline.fired and deadline.task is not None:
            deadline.task.uncancel()
            message = f"the engine did not answer within {timeout:g} s"
            raise GatewayError(504, "COMPLETION_TIMEOUT", message) from None
        raise
    finally:
        deadline.stop()
    try:
        content_type = upstream.headers.get("Content-Type", "application/json")
        response = web.StreamResponse(
            headers={"Content-Type": content_type, "Cache-Control": "no-cache", **correlation}
        )
        await response.prepare(request)
        content = upstream.content
        watchdog = _Idle(loop, timeout, upstream)
        tail = b""
        try:
            while True:
                try:
                    chunk = await content.readany()
                except _UPSTREAM_ERRORS:
                    if watchdog.fired:
                        await response.write(STREAM_TIMED_OUT)
                    else:
                        engine_failed()
                        await response.write(STREAM_FAILED)
                    break
                if not chunk:
                    break
                watchdog.last = watchdog.loop.time()
                exchange.events += chunk.count(b"data:")
                tail = (tail + chunk)[-_TAIL_BYTES:]
                if transform is not None:  # tool calls are held until whole
                    chunk = transform.feed(chunk)
                    if not chunk:
                        continue
                await response.write(chunk)  # a client gone away raises: nothing to tell
            if transform is not None and (rest := transform.finish()):
                await response.write(rest)
        finally:
            watchdog.stop()
        exchange.tokens = total_tokens(tail)
        await response.write_eof()
        return response
    finally:
        upstream.release()
