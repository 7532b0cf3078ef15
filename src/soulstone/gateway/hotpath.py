"""The hot routes on a plain asyncio protocol: generation requests without aiohttp.web.

Every connection starts here. A request of the plain shape (see `heads`)
to /v1/chat/completions, /v1/completions or /v1/embeddings goes straight to
the request path; its answer is written as bytes (a whole body, or chunked
server-sent events). The first request of any other shape or route hands
the connection, with every byte not yet used, to aiohttp's server
(GuardedConnection), which keeps it from then on: the admin API, the
dashboard, WebSockets, /v1/models, errors of HTTP itself, all as before.

The same defences hold here: the peer read and counted at accept, the header
clock (from the accept, or from the first byte of a next head, also while
an answer is still sent), the idle timeout between requests, the handler
cancelled when its caller goes away, errors in the C4a shape with the
correlation headers.
"""

from __future__ import annotations

import asyncio
import traceback
from collections.abc import Callable
from typing import cast

from aiohttp import web
from aiohttp.tcp_helpers import tcp_keepalive, tcp_nodelay

from soulstone.dispatch.call import ENDPOINTS, Answer, Entry, Rejection
from soulstone.dispatch.events import Chunk, Failure
from soulstone.dispatch.forward import Progress
from soulstone.dispatch.path import Outcome, RequestPath
from soulstone.dispatch.refusals import error_bytes, refusal_headers
from soulstone.dispatch.stream import Stream
from soulstone.errors import Refusal
from soulstone.gateway.connections import (
    ConnectionGate,
    ConnectionOptions,
    GuardedConnection,
    PeerKey,
)
from soulstone.gateway.heads import (
    HEAD_LIMIT,
    Dates,
    HotHead,
    correlation_lines,
    header_lines,
    parse_head,
    stream_head,
    whole_head,
)
from soulstone.gateway.relay import SSE_DONE
from soulstone.guard.identity import Peer

PAUSE_AT = 256 * 1024  # unread bytes of a next request at which reading pauses
_REQUEST_ID, _SESSION_ID = "x-request-id", "x-conveyance-session-id"
_LAST_CHUNK = b"0\r\n\r\n"


class HotGate(ConnectionGate):
    """The protocol factory of the API listeners: a HotConnection per accepted connection."""

    def __init__(
        self, server: web.Server, options: ConnectionOptions,
        on_refused: Callable[[PeerKey, str], None], path: RequestPath, max_body: int,
        own_uid: int | None = None,
    ) -> None:  # fmt: skip
        super().__init__(server, options, on_refused, own_uid)
        self.path = path
        self.max_body = max_body
        self.dates = Dates()
        self.open: set[HotConnection] = set()

    def __call__(self) -> asyncio.Protocol:
        """A protocol for one new connection."""
        return HotConnection(self)

    def hand_off(self, transport: asyncio.Transport, peer: Peer | None, key: PeerKey,
                 data: bytes) -> None:  # fmt: skip
        """Give a connection (and its unread bytes) to aiohttp's server for good."""
        GuardedConnection(self).adopt(transport, peer, key, data)

    def close(self) -> None:
        """Close every connection the hot path still holds (the gateway stops)."""
        for connection in list(self.open):
            connection.close()


class HotConnection(asyncio.Protocol):
    """One connection while it asks the hot routes (see the module's docstring)."""

    def __init__(self, gate: HotGate) -> None:
        self._gate = gate
        self._loop = gate.loop
        self.transport: asyncio.Transport | None = None
        self.peer: Peer | None = None
        self._key: PeerKey | None = None
        self._buffer = b""  # bytes of the next head (and beyond) not used yet
        self._task: asyncio.Task[None] | None = None  # the request being answered
        self._body: list[bytes] | None = []  # the body's pieces so far (None: thrown away)
        self._body_left = 0  # body bytes still to come
        self._body_waiter: asyncio.Future[None] | None = None
        self._clock: asyncio.TimerHandle | None = None
        self._due = 0.0  # loop time the head (or the idle spell) must end by; 0: none
        self._write_paused = False
        self._drain: asyncio.Future[None] | None = None
        self._reading_paused = False
        self._done = False  # closed, or handed to aiohttp
        self._progress: Progress | None = None  # a stream being pushed: how to pause its engine

    # -- protocol callbacks ----------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Read the peer, count it, and start the clock for the first request's head."""
        admitted = self._gate.accept(transport)
        if admitted is None:
            self._done = True
            return
        self.peer, self._key = admitted
        self.transport = cast(asyncio.Transport, transport)  # uvloop's: no subclass
        if self.peer is None:  # TCP, as aiohttp sets it up
            tcp_nodelay(self.transport, True)
            tcp_keepalive(self.transport)
        self._gate.open.add(self)
        self._arm(self._loop.time() + self._gate.options.header_timeout)

    def data_received(self, data: bytes) -> None:
        """Collect the body being sent, else the next head; serve it when it is whole."""
        if self._done:
            return
        left = self._body_left
        if left:
            if len(data) <= left:
                piece, data = data, b""
            else:
                piece, data = data[:left], data[left:]
            self._body_left = left = left - len(piece)
            if self._body is not None:
                self._body.append(piece)
            if not left and self._body_waiter is not None and not self._body_waiter.done():
                self._body_waiter.set_result(None)
            if not data:
                if not left and self._task is None:
                    self._next()
                return
        self._buffer = self._buffer + data if self._buffer else data
        if self._task is None:
            self._next()
            return
        if not self._due:  # a next head starts while the last answer is still sent: timed
            self._arm(self._loop.time() + self._gate.options.header_timeout)
        if len(self._buffer) > PAUSE_AT and not self._reading_paused and self.transport:
            self._reading_paused = True
            self.transport.pause_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        """Uncount the connection; a request still answered is cancelled."""
        self._done = True
        self._gate.open.discard(self)
        if self._clock is not None:
            self._clock.cancel()
            self._clock = None
        if self._key is not None:
            self._gate.counts.release(self._key)
            self._key = None
        if self._task is not None:
            self._task.cancel()
        gone = ConnectionResetError("the caller went away")
        for waiter in (self._drain, self._body_waiter):
            if waiter is not None and not waiter.done():
                waiter.set_exception(gone)
                waiter.exception()  # retrieved: nobody may be waiting any more

    def pause_writing(self) -> None:
        """The caller reads slower than we write: a stream waits before its next chunk."""
        self._write_paused = True

    def resume_writing(self) -> None:
        """The caller caught up."""
        self._write_paused = False
        if self._progress is not None and self._progress.writing:
            self._progress.writing = False
            self._progress.resume_engine()
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)

    def close(self) -> None:
        """Close the connection (a request still answered is cancelled when it closes)."""
        if self.transport is not None and not self._done:
            self.transport.close()

    # -- heads and clocks --------------------------------------------------------------

    def _next(self) -> None:
        """Serve the next request in the buffer, hand the connection off, or wait for more."""
        buffer = self._buffer
        if not buffer or self._done or self._body_left:
            return
        end = buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(buffer) > HEAD_LIMIT:
                self._hand_off()
            elif not self._due or self._idle:
                self._idle = False
                self._arm(self._loop.time() + self._gate.options.header_timeout)
            return
        gate = self._gate
        hot = parse_head(buffer[:end], ENDPOINTS, gate.max_body)
        if hot is None:
            self._hand_off()
            return
        self._due = 0.0
        self._idle = False
        rest = buffer[end + 4 :]
        length = hot.length
        if len(rest) >= length:
            self._body = [rest if len(rest) == length else rest[:length]]
            self._buffer = rest[length:]
            self._body_left = 0
        else:
            self._body = [rest] if rest else []
            self._buffer = b""
            self._body_left = length - len(rest)
        if self._reading_paused and self.transport is not None:
            self._reading_paused = False
            self.transport.resume_reading()
        self._task = self._loop.create_task(self._serve(hot))

    _idle = False  # the clock times an idle spell (not a head)

    def _arm(self, due: float) -> None:
        """Make `due` the deadline, moving the one timer earlier when it must."""
        self._due = due
        clock = self._clock
        if clock is None or clock.when() > due:
            if clock is not None:
                clock.cancel()
            self._clock = self._loop.call_at(due, self._tick)

    def _tick(self) -> None:
        self._clock = None
        if not self._due or self._done:
            return
        now = self._loop.time()
        if now < self._due:
            self._clock = self._loop.call_at(self._due, self._tick)
        elif self._task is not None:  # a next head waits while an answer is still sent
            self._arm(now + self._gate.options.header_timeout)
        else:  # a head too slow, or an idle spell too long
            self.close()

    def _hand_off(self) -> None:
        transport, key = self.transport, self._key
        if transport is None or key is None:
            return
        self._done = True
        self._gate.open.discard(self)
        if self._clock is not None:
            self._clock.cancel()
            self._clock = None
        if self._reading_paused:
            transport.resume_reading()
        data, self._buffer = self._buffer, b""
        self._gate.hand_off(transport, self.peer, key, data)

    # -- one request ----------------------------------------------------------------------

    async def _read_body(self) -> bytes:
        """The request's body, once it is all in."""
        if self._body_left:
            self._body_waiter = self._loop.create_future()
            await self._body_waiter
        body = self._body or ()
        return body[0] if len(body) == 1 else b"".join(body)

    async def _serve(self, hot: HotHead) -> None:
        path = self._gate.path
        headers = hot.headers
        request_id = dict.get(headers, _REQUEST_ID) or path.services.new_request_id(True)
        session_id = dict.get(headers, _SESSION_ID) or None
        lines = correlation_lines(request_id, session_id)
        started = False
        try:
            entry = Entry(ENDPOINTS[hot.path], headers, self.peer, self._read_body, request_id,
                          session_id)  # fmt: skip
            outcome: Outcome = await path.enter(entry)
            started = True
            if isinstance(outcome, Stream):
                await self._stream(outcome, lines)
            else:
                self._whole(outcome, lines)
        except (ConnectionError, asyncio.CancelledError):
            self._abort()  # the caller went away (or the gateway stops)
        except Exception as error:
            self._failed(error, started, lines)
        finally:
            self._task = None
            if self._body_left:
                self._body = None  # unread: thrown away as it comes
            else:
                self._body = []
            transport = self.transport
            if not self._done and transport is not None and not transport.is_closing():
                self._idle = True
                self._arm(self._loop.time() + self._gate.options.idle_timeout)
                self._next()

    def _whole(self, outcome: Answer | Rejection, lines: bytes) -> None:
        """An Answer or a Rejection, written at once."""
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        date = self._gate.dates.now()
        if isinstance(outcome, Answer):
            body = outcome.body
            head = whole_head(outcome.status, outcome.content_type, len(body), lines, date,
                              outcome.served_by)  # fmt: skip
        else:  # a Rejection
            refusal = outcome.refusal
            body = error_bytes(refusal, outcome.flat)
            extra = refusal_headers(refusal)
            if extra:
                lines += header_lines(extra)
            head = whole_head(refusal.status, "application/json", len(body), lines, date)
        if len(body) < 16384:
            transport.write(head + body)
        else:
            transport.writelines((head, body))

    async def _stream(self, stream: Stream, lines: bytes) -> None:
        """A stream's events as chunked server-sent events, unbuffered; errors end with [DONE]."""
        transport = self.transport
        async with stream:
            if transport is None or transport.is_closing():
                raise ConnectionResetError("the caller went away")
            transport.write(stream_head(stream.content_type, lines, self._gate.dates.now(),
                                        stream.served_by))  # fmt: skip
            progress = stream.progress
            progress.on_stall = transport.abort
            if stream.push is not None:  # the engine's chunks written from its own callback
                self._progress = progress
                try:
                    failure = await stream.push(self._push_chunk)
                finally:
                    self._progress = None
                if self._done or transport.is_closing():
                    raise ConnectionResetError("the caller went away")
                if failure is not None:
                    data = b"data: " + error_bytes(failure, stream.flat) + b"\n\n" + SSE_DONE
                    transport.write(b"%x\r\n%s\r\n" % (len(data), data))
                transport.write(_LAST_CHUNK)
                return
            async for event in stream:
                if isinstance(event, Chunk):
                    data = event.data
                elif isinstance(event, Failure):
                    data = b"data: " + error_bytes(event.refusal, stream.flat) + b"\n\n" + SSE_DONE
                else:
                    continue
                if transport.is_closing():
                    raise ConnectionResetError("the caller went away")
                if data:
                    transport.write(b"%x\r\n%s\r\n" % (len(data), data))
                if self._write_paused:
                    progress.writing = True
                    await self._drained()
                    progress.writing = False
            transport.write(_LAST_CHUNK)

    def _push_chunk(self, data: bytes) -> None:
        """One chunk of a pushed stream, written at once; the engine pauses while we cannot."""
        transport = self.transport
        if transport is None or self._done or transport.is_closing():
            return  # the caller went away: its request is cancelled
        transport.write(b"%x\r\n%s\r\n" % (len(data), data))
        if self._write_paused and self._progress is not None:
            self._progress.writing = True  # the idle clock cuts a caller that stopped reading
            self._progress.pause_engine()

    async def _drained(self) -> None:
        while self._write_paused:
            if self._done:
                raise ConnectionResetError("the caller went away")
            self._drain = self._loop.create_future()
            await self._drain

    def _abort(self) -> None:
        if self.transport is not None and not self._done:
            self.transport.abort()

    def _failed(self, error: Exception, started: bool, lines: bytes) -> None:
        """A failure of the gateway itself: a 500 in the error shape when nothing was sent."""
        frames = traceback.extract_tb(error.__traceback__)
        where = f"{frames[-1].filename}:{frames[-1].lineno}" if frames else "?"
        self._gate.path.log.warning("could not serve a request", status=500,
                                    error=type(error).__name__, where=where)  # fmt: skip
        transport = self.transport
        if started or transport is None or transport.is_closing():
            self._abort()
            return
        refusal = Refusal(500, "INTERNAL_ERROR", f"the gateway failed on this request "
                          f"({type(error).__name__}); see its log")  # fmt: skip
        body = error_bytes(refusal)
        transport.write(whole_head(500, "application/json", len(body), lines,
                                   self._gate.dates.now()) + body)  # fmt: skip
        transport.close()
