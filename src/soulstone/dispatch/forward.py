"""Send a call to its engine and bring the answer back: whole, or as a stream of events.

Bytes are forwarded as the engine sent them; only usage is read (from the
tail, without parsing the JSON). A completion timeout bounds a whole answer,
the wait for a stream's first byte, and then each gap between chunks.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncGenerator, Callable
from typing import NamedTuple

from soulstone.dispatch.call import REQUEST_ID, Answer
from soulstone.dispatch.events import Chunk, Done, Event, Failure, ToolCall
from soulstone.errors import Refusal
from soulstone.runtimes.http1 import (
    EngineConnection,
    EngineConnectionError,
    EnginePool,
    EngineSilent,
    post,
)
from soulstone.tools.stream import ToolStream

UPSTREAM_ERRORS = (OSError,)  # EngineConnectionError is a ConnectionError
_ID_HEADER = f"{REQUEST_ID}: ".encode()
_USAGE = re.compile(rb'"(prompt_tokens|completion_tokens|total_tokens)"\s*:\s*(\d+)')
TAIL_BYTES = 4096


class Usage(NamedTuple):
    """The engine's reported usage (None where it said nothing)."""

    prompt: int | None = None
    completion: int | None = None
    total: int | None = None


NO_USAGE = Usage()


def usage_in(data: bytes) -> Usage:
    """The last `usage` counts in a body or stream tail, without parsing the JSON."""
    found = {name: int(value) for name, value in _USAGE.findall(data)}  # the last one wins
    if not found:
        return NO_USAGE
    return Usage(found.get(b"prompt_tokens"), found.get(b"completion_tokens"),
                 found.get(b"total_tokens"))  # fmt: skip


class EngineGone(Refusal):
    """The engine refused the connection, or closed it before a byte of answer (502).

    It is most likely dead: the request path waits once for its restart and
    sends again (an engine that still runs gets the request a second time).
    """

    def __init__(self, error: OSError) -> None:
        super().__init__(502, "ENGINE_UNREACHABLE", f"the engine did not answer: "
                         f"{type(error).__name__}")  # fmt: skip


def engine_failed_refusal() -> Refusal:
    """The engine stopped in the middle of an answer."""
    return Refusal(502, "ENGINE_FAILED", "the engine stopped in the middle of the answer")


def timed_out_refusal(timeout: float) -> Refusal:
    """The engine sent nothing for longer than the completion timeout."""
    return Refusal(504, "COMPLETION_TIMEOUT", f"the engine sent nothing for {timeout:g} s")


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


class Progress:
    """Whether the caller is reading: set by the transport around each write of a stream.

    `writing` is True while a write waits; `on_stall` (the transport's) cuts a
    caller that stopped reading.
    """

    __slots__ = ("connection", "on_stall", "writing")

    def __init__(self, connection: EngineConnection | None = None) -> None:
        self.writing = False
        self.on_stall: Callable[[], None] | None = None
        self.connection = connection  # the engine's, paused while a pushed write waits

    def pause_engine(self) -> None:
        """Stop reading the engine until `resume_engine` (a pushing caller cannot write)."""
        if self.connection is not None:
            self.connection.pause()

    def resume_engine(self) -> None:
        """Read the engine again."""
        if self.connection is not None:
            self.connection.resume()


class _Idle:
    """Ends a stream that makes no progress for `timeout` seconds, on either side.

    An engine that sends nothing: the upstream is closed (the pending read
    fails at once). A caller that stopped reading (a write still waits): it is
    cut too, so it cannot keep its slot. One timer per stream, re-armed only
    when it fires: each chunk costs a clock read, not a timer reschedule.
    """

    __slots__ = ("fired", "handle", "last", "loop", "progress", "timeout", "upstream")

    def __init__(
        self, loop: asyncio.AbstractEventLoop, timeout: float, upstream: EngineConnection,
        progress: Progress,
    ) -> None:  # fmt: skip
        self.loop, self.timeout, self.upstream = loop, timeout, upstream
        self.progress = progress
        self.last = loop.time()
        self.fired = False
        self.handle = loop.call_later(timeout, self._check)

    def _check(self) -> None:
        idle = self.loop.time() - self.last
        if idle < self.timeout:
            self.handle = self.loop.call_later(self.timeout - idle, self._check)
            return
        self.fired = True
        progress = self.progress
        if progress.writing and progress.on_stall is not None:
            progress.on_stall()  # the caller stopped reading: its write fails at once
        self.upstream.close()  # the pending read fails at once

    def stop(self) -> None:
        self.handle.cancel()


class Upstream:
    """An engine's streamed answer, once its status was 200: read it with `events`.

    After the events, `usage` is the engine's reported usage (when it gave
    one), `failure` the refusal that ended the stream (when one did), and
    `events_seen` the `data:` lines passed on (a usage estimate).
    """

    def __init__(self, response: EngineConnection, content_type: str | None,
                 timeout: float) -> None:  # fmt: skip
        self.response = response
        self.timeout = timeout
        self.content_type = content_type or "text/event-stream"
        self.events_seen = 0
        self.usage = NO_USAGE
        self.first_at: float | None = None  # perf_counter() at the first chunk
        self.failure: Refusal | None = None
        self.progress = Progress(response)
        self.ended = False  # the events ended: the connection was released or closed
        self.whole = False  # the engine's answer was read to its end

    async def events(
        self, on_failure: Callable[[], None], transform: ToolStream | None = None
    ) -> AsyncGenerator[Event, None]:
        """The engine's chunks, then Done; a Failure when it dies or goes quiet.

        With a transform, tool calls are held until whole (ToolCall events).
        One generator, so each chunk costs one hop on its way to the caller.
        """
        response = self.response
        loop = asyncio.get_running_loop()
        watchdog = _Idle(loop, self.timeout, response, self.progress)
        read = response.read
        tail = b""
        whole = False
        try:
            while True:
                try:
                    chunk = await read()
                except UPSTREAM_ERRORS:
                    yield Failure(self._broken(watchdog, on_failure))
                    return
                if not chunk:
                    break
                watchdog.last = loop.time()
                if self.first_at is None:
                    self.first_at = time.perf_counter()
                self.events_seen += chunk.count(b"data:")
                tail = (tail + chunk)[-TAIL_BYTES:] if len(chunk) < TAIL_BYTES else chunk
                if transform is None:
                    yield Chunk(chunk)
                    continue
                sent = transform.sent_calls
                data = transform.feed(chunk)
                if data:
                    yield ToolCall(data) if transform.sent_calls > sent else Chunk(data)
            if transform is not None and (rest := transform.finish()):
                yield Chunk(rest)
            whole = self.whole = True
            self.usage = usage_in(tail[-TAIL_BYTES:])
            yield Done(self.usage.total)
        finally:
            self._settle(watchdog, whole)

    async def push(self, on_failure: Callable[[], None], write: Callable[[bytes], None],
                   ) -> Refusal | None:  # fmt: skip
        """Write the engine's chunks with `write` as they come (no transform); what ended it.

        The push interface: each chunk costs one call, no generator step and no
        event object. `write` must not raise (a caller gone away: the transport
        cancels the request). Returns the refusal that ended the stream, or None.
        """
        response = self.response
        loop = asyncio.get_running_loop()
        watchdog = _Idle(loop, self.timeout, response, self.progress)
        tail = [b""]

        def take(chunk: bytes) -> None:
            watchdog.last = loop.time()
            if self.first_at is None:
                self.first_at = time.perf_counter()
            self.events_seen += chunk.count(b"data:")
            tail[0] = (tail[0] + chunk)[-TAIL_BYTES:] if len(chunk) < TAIL_BYTES else chunk
            write(chunk)

        whole = False
        try:
            try:
                await response.push(take)
            except UPSTREAM_ERRORS:
                return self._broken(watchdog, on_failure)
            whole = self.whole = True
            self.usage = usage_in(tail[0][-TAIL_BYTES:])
            return None
        finally:
            self._settle(watchdog, whole)

    def _settle(self, watchdog: _Idle, whole: bool) -> None:
        """The stream is over: stop its watchdog; a whole answer's connection goes back to
        the pool, any other is closed (the engine sees the cancel)."""
        watchdog.stop()
        self.ended = True
        if whole:
            self.response.release()
        else:
            self.response.close()

    def _broken(self, watchdog: _Idle, on_failure: Callable[[], None]) -> Refusal:
        """Why a stream broke off: the engine fell silent (timed out) or failed."""
        if watchdog.fired:
            self.failure = timed_out_refusal(self.timeout)
        else:
            on_failure()
            self.failure = engine_failed_refusal()
        return self.failure

    def abort(self) -> None:
        """Close the engine's answer unless it was read to its end (released already).

        Needed when `events` was never started: closing an unstarted generator
        runs none of its code, so the engine would stay blocked on a full socket.
        """
        if not self.ended:
            self.response.close()


def request_head(prefix: bytes, request_id: str, length: int, trace: bytes = b"") -> bytes:
    """The whole request head: method, path, Host and Content-Type from `prefix`, then ours.

    `trace`: a whole `traceparent` header line (CRLF included) when the request is traced.
    """
    if "\r" in request_id or "\n" in request_id:  # never a header of its own
        request_id = request_id.replace("\r", " ").replace("\n", " ")
    return b"%s%s%s\r\n%sContent-Length: %d\r\n\r\n" % (
        prefix, _ID_HEADER, request_id.encode("utf-8", "surrogateescape"), trace,
        length)  # fmt: skip


async def send(
    pool: EnginePool, head: bytes, body: bytes, stream: bool, timeout: float,
    on_failure: Callable[[], None],
) -> Answer | Upstream:  # fmt: skip
    """Post the body; a whole Answer (any status), or an Upstream stream when it is one.

    Refusal 502 when the engine cannot be reached (EngineGone when nothing
    listens) or stops before answering, 504 when it says nothing within `timeout`.
    """
    loop = asyncio.get_running_loop()
    deadline = _Deadline(loop, timeout)
    try:
        try:
            connection, answer = await post(pool, head, body)
        except UPSTREAM_ERRORS as error:  # a connect timeout is an OSError too
            on_failure()
            if isinstance(error, EngineSilent) or not isinstance(
                    error, EngineConnectionError | TimeoutError):  # fmt: skip
                raise EngineGone(error) from None  # refused at connect, or closed unanswered
            raise Refusal(502, "ENGINE_UNREACHABLE", f"the engine did not answer: "
                          f"{type(error).__name__}") from None  # fmt: skip
        if stream and answer.status == 200:
            return Upstream(connection, answer.content_type, timeout)
        try:
            data = await connection.read_all()
        except UPSTREAM_ERRORS:
            connection.close()
            on_failure()
            raise Refusal(502, "ENGINE_FAILED", "the engine stopped before it answered") from None
        except BaseException:
            connection.close()
            raise
        connection.release()
        return Answer(answer.status, data, answer.content_type or "application/json")
    except asyncio.CancelledError:
        if deadline.fired and deadline.task is not None:
            deadline.task.uncancel()
            message = f"the engine did not answer within {timeout:g} s"
            raise Refusal(504, "COMPLETION_TIMEOUT", message) from None
        raise
    finally:
        deadline.stop()
