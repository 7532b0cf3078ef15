"""A small HTTP/1.1 client on a plain asyncio protocol, pooled per engine address.

The request path's one upstream call: a POST whose head is built once per
engine and path, the body written as it is, the answer read back as bytes
(Content-Length, chunked or until close). Nothing else of HTTP is needed to
talk to an engine, so nothing else is here: no redirects, cookies, proxies,
compression. Engines are local (127.0.0.1 or a Unix socket); a remote
soulstone's pool (SPEC C12) connects to its host instead, over TLS for
https, with a short connect timeout.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import NamedTuple, cast

HEAD_LIMIT = 64 * 1024  # an answer's status line and headers
READ_HIGH_WATER = 256 * 1024  # unread body bytes at which reading pauses
IDLE_S = 30.0  # an idle keep-alive connection older than this is closed, not reused
IDLE_LIMIT = 256  # idle connections kept per engine
CONNECT_TIMEOUT_S = 10.0

_HEAD, _LENGTH, _CHUNKED, _UNTIL_CLOSE, _DONE = range(5)


class EngineConnectionError(ConnectionError):
    """The engine's connection broke, or what came back was not HTTP/1.1."""


class EngineSilent(EngineConnectionError):
    """The engine's connection closed before a byte of the answer came (e.g. it just died)."""


class ConnectTimeout(ConnectionError):
    """A remote did not accept the connection in time (taken as refused: it is down)."""


class ResponseHead(NamedTuple):
    """An answer's status and the headers the gateway uses."""

    status: int
    content_type: str | None


def _parse_head(data: bytes) -> tuple[ResponseHead, int, int, bool]:
    """Status, content type, body length (-1 chunked, -2 until close) and keep-alive."""
    lines = data.split(b"\r\n")
    status_line = lines[0].split(b" ", 2)
    if len(status_line) < 2 or not status_line[0].startswith(b"HTTP/1."):
        raise EngineConnectionError("the engine's answer is not HTTP/1.x")
    try:
        status = int(status_line[1])
    except ValueError:
        raise EngineConnectionError("the engine's answer has no status code") from None
    keep_alive = status_line[0] == b"HTTP/1.1"
    content_type: str | None = None
    length = -2
    chunked = False
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if not colon:
            continue
        key = name.strip().lower()
        if key == b"content-length":
            try:
                length = int(value)
            except ValueError:
                raise EngineConnectionError("the engine sent a bad Content-Length") from None
        elif key == b"transfer-encoding":
            chunked = value.strip().lower().endswith(b"chunked")
        elif key == b"content-type":
            content_type = value.strip().decode("latin-1")
        elif key == b"connection":
            token = value.strip().lower()
            keep_alive = token != b"close" and (keep_alive or token == b"keep-alive")
    if chunked:
        length = -1
    elif status in (204, 304) or 100 <= status < 200:
        length = 0
    if length == -2:
        keep_alive = False  # the body ends when the connection does
    return ResponseHead(status, content_type), length, status, keep_alive


class EngineConnection(asyncio.Protocol):
    """One keep-alive connection to an engine: write a request, read its answer.

    One request at a time. `head` waits for the status and headers; `read`
    gives the body as it arrives (b"" at its end); `close` aborts and makes a
    pending read fail at once.
    """

    def __init__(self, pool: EnginePool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.idle_since = 0.0
        self.got_bytes = False
        self._mode = _DONE
        self._buffer = b""
        self._left = 0  # _LENGTH: body bytes to come; _CHUNKED: bytes of this chunk's data
        self._crlf = 0  # _CHUNKED: bytes of the CRLF after a chunk's data still to skip
        self._body: list[bytes] = []
        self._body_size = 0
        self._paused = False
        self._keep_alive = False
        self._head: ResponseHead | None = None
        self._error: Exception | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._write_waiter: asyncio.Future[None] | None = None
        self._sink: Callable[[bytes], None] | None = None  # pushed to: the body's bytes go here

    # -- protocol callbacks ----------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Keep the transport."""
        self.transport = cast(asyncio.Transport, transport)  # uvloop's: no subclass

    def data_received(self, data: bytes) -> None:
        """Parse the head, then decode the body into the unread pieces."""
        self.got_bytes = True
        try:
            if self._mode == _HEAD:
                data = self._feed_head(data)
                if not data or self._mode == _HEAD:
                    return
            if self._mode == _LENGTH:
                self._feed_length(data)
            elif self._mode == _CHUNKED:
                self._feed_chunked(data)
            elif self._mode == _UNTIL_CLOSE:
                self._append(data)
            else:  # bytes nobody asked for: the connection cannot be trusted
                raise EngineConnectionError("the engine sent bytes after its answer")
        except EngineConnectionError as error:
            self._fail(error)
            return
        if self._body_size >= READ_HIGH_WATER and not self._paused and self.transport:
            self._paused = True
            self.transport.pause_reading()

    def eof_received(self) -> bool:
        """The engine closed its side: close ours (connection_lost follows)."""
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        """An answer read until close ends here; anything else in flight breaks."""
        self.closed = True
        if self._mode == _UNTIL_CLOSE:
            self._mode = _DONE
            self._wake()
        elif self._mode != _DONE and self._error is None:
            self._error = EngineConnectionError("the engine closed the connection")
            self._wake()
        if self._write_waiter is not None and not self._write_waiter.done():
            self._write_waiter.set_exception(EngineConnectionError("the engine went away"))

    def pause_writing(self) -> None:
        """The engine reads slower than we write: `send` waits."""
        self._write_waiter = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        """The engine caught up."""
        waiter, self._write_waiter = self._write_waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- parsing ---------------------------------------------------------------------

    def _feed_head(self, data: bytes) -> bytes:
        buffer = self._buffer + data if self._buffer else data
        end = buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(buffer) > HEAD_LIMIT:
                raise EngineConnectionError("the engine's answer head is too large")
            self._buffer = buffer
            return b""
        self._buffer = b""
        head, length, status, keep_alive = _parse_head(buffer[:end])
        rest = buffer[end + 4 :]
        if 100 <= status < 200:  # informational: the real answer follows
            return self._feed_head(rest) if rest else b""
        self._head = head
        self._keep_alive = keep_alive
        if length == -1:
            self._mode, self._left, self._crlf = _CHUNKED, 0, 0
        elif length == -2:
            self._mode = _UNTIL_CLOSE
        elif length == 0:
            self._mode = _DONE
        else:
            self._mode, self._left = _LENGTH, length
        self._wake()
        if rest and self._mode == _DONE:
            raise EngineConnectionError("the engine sent bytes after its answer")
        return rest

    def _feed_length(self, data: bytes) -> None:
        left = self._left
        if len(data) > left:
            raise EngineConnectionError("the engine sent more than its Content-Length")
        self._left = left - len(data)
        if self._left == 0:
            self._mode = _DONE
        self._append(data)

    def _feed_chunked(self, data: bytes) -> None:
        buffer = self._buffer + data if self._buffer else data
        self._buffer = b""
        pos, end = 0, len(buffer)
        pieces = []
        while pos < end:
            if self._crlf:
                skip = min(self._crlf, end - pos)
                pos += skip
                self._crlf -= skip
                continue
            if self._left:
                take = min(self._left, end - pos)
                pieces.append(buffer[pos : pos + take] if take < end - pos or pos else buffer)
                pos += take
                self._left -= take
                if not self._left:
                    self._crlf = 2
                continue
            line_end = buffer.find(b"\r\n", pos)
            if line_end < 0:
                if end - pos > 1024:
                    raise EngineConnectionError("the engine sent a bad chunk size")
                self._buffer = buffer[pos:]
                break
            try:
                size = int(buffer[pos:line_end].split(b";", 1)[0], 16)
            except ValueError:
                raise EngineConnectionError("the engine sent a bad chunk size") from None
            if size == 0:  # the last chunk; trailers (none expected) end with an empty line
                trailer_end = buffer.find(b"\r\n\r\n", line_end)
                if trailer_end < 0:
                    if end - line_end > HEAD_LIMIT:
                        raise EngineConnectionError("the engine's trailers are too large")
                    self._buffer = buffer[pos:]
                    break
                if trailer_end + 4 != end:
                    raise EngineConnectionError("the engine sent bytes after its answer")
                self._mode = _DONE
                pos = end
                break
            self._left = size
            pos = line_end + 2
        if pieces:
            self._append(pieces[0] if len(pieces) == 1 else b"".join(pieces))
        elif self._mode == _DONE:
            self._wake()

    def _append(self, data: bytes) -> None:
        if self._sink is not None:
            if data:
                self._sink(data)
            if self._mode == _DONE:
                self._wake()
            return
        if data:
            self._body.append(data)
            self._body_size += len(data)
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    def _fail(self, error: Exception) -> None:
        self._error = error
        self._keep_alive = False
        self._wake()
        if self.transport is not None:
            self.transport.abort()

    # -- the caller's side -----------------------------------------------------------

    async def send(self, head: bytes, body: bytes) -> None:
        """Write a request (the head ends with the blank line) and expect its answer."""
        transport = self.transport
        if transport is None or self.closed:
            raise EngineConnectionError("the engine closed the connection")
        self._mode, self._head, self._error = _HEAD, None, None
        self._body, self._body_size, self._buffer, self.got_bytes = [], 0, b"", False
        if len(body) < 16384:
            transport.write(head + body)
        else:
            transport.writelines((head, body))
        if self._write_waiter is not None:
            await self._write_waiter

    async def head(self) -> ResponseHead:
        """The answer's status and content type, once they came."""
        while self._head is None:
            if self._error is not None:
                raise self._error
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter
        return self._head

    async def read(self) -> bytes:
        """The body bytes that came since the last read; b"" once the body ended."""
        while not self._body:
            if self._error is not None:
                raise self._error
            if self._mode == _DONE:
                return b""
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter
        body = self._body
        data = body[0] if len(body) == 1 else b"".join(body)
        self._body, self._body_size = [], 0
        if self._paused and self.transport is not None:
            self._paused = False
            self.transport.resume_reading()
        return data

    async def push(self, sink: Callable[[bytes], None]) -> None:
        """Hand the body's bytes to `sink` as they come (it must not raise), until its end.

        No future and no task step per piece: the engine's bytes go to the caller
        from this protocol's own callback. Raises as `read` does.
        """
        body, self._body, self._body_size = self._body, [], 0
        self._sink = sink
        try:
            if self._paused and self.transport is not None:
                self._paused = False
                self.transport.resume_reading()
            for data in body:
                sink(data)
            while self._mode != _DONE:
                if self._error is not None:
                    raise self._error
                self._waiter = asyncio.get_running_loop().create_future()
                await self._waiter
            if self._error is not None:
                raise self._error
        finally:
            self._sink = None

    def pause(self) -> None:
        """Stop reading the engine (the caller reads slower than it sends)."""
        if not self._paused and self.transport is not None and not self.closed:
            self._paused = True
            self.transport.pause_reading()

    def resume(self) -> None:
        """Read the engine again."""
        if self._paused and self.transport is not None and not self.closed:
            self._paused = False
            self.transport.resume_reading()

    async def read_all(self) -> bytes:
        """The whole body."""
        pieces = []
        while data := await self.read():
            pieces.append(data)
        return pieces[0] if len(pieces) == 1 else b"".join(pieces)

    def release(self) -> None:
        """Done with this answer: back to the pool when it was read whole, else closed."""
        if self._mode == _DONE and self._error is None and self._keep_alive and not self.closed:
            self.pool.keep(self)
        else:
            self.close()

    def close(self) -> None:
        """Abort the connection; a pending read fails at once."""
        if self._error is None and self._mode != _DONE:
            self._error = EngineConnectionError("the connection was closed")
        self._wake()
        if not self.closed:
            self.closed = True
            if self.transport is not None:
                self.transport.abort()


Address = tuple[str, str | int]  # ("unix", path) or ("tcp", port)


@dataclass(frozen=True)
class RemoteTarget:
    """Where a remote soulstone's pool connects: its host (TLS for https) and how patiently."""

    host: str
    tls: ssl.SSLContext | None = None
    connect_timeout: float = 1.0


class EnginePool:
    """Idle keep-alive connections to one engine address, most recently used first.

    With `remote`, TCP goes to that host (not 127.0.0.1), over TLS when it
    says so, and a connect that takes longer than its timeout fails as
    ConnectTimeout.
    """

    def __init__(self, address: Address, remote: RemoteTarget | None = None) -> None:
        self.address = address
        self.remote = remote
        self.idle: list[EngineConnection] = []

    async def connect(self, fresh: bool = False) -> tuple[EngineConnection, bool]:
        """An open connection and whether it was reused (a reused one may have just closed).

        `fresh`: a new connection, never an idle one.
        """
        loop = asyncio.get_running_loop()
        now = loop.time()
        idle = [] if fresh else self.idle
        while idle:
            connection = idle.pop()
            if connection.closed:
                continue
            if now - connection.idle_since > IDLE_S:
                connection.close()
                continue
            return connection, True
        factory = partial(EngineConnection, self)
        if self.remote is not None:
            return await self._connect_remote(factory, self.remote), False
        kind, where = self.address
        async with asyncio.timeout(CONNECT_TIMEOUT_S):
            if kind == "unix":
                _, protocol = await loop.create_unix_connection(factory, str(where))
            else:
                _, protocol = await loop.create_connection(factory, "127.0.0.1", int(where))
        return protocol, False

    async def _connect_remote(self, factory: partial[EngineConnection],
                              remote: RemoteTarget) -> EngineConnection:  # fmt: skip
        loop = asyncio.get_running_loop()
        kind, where = self.address
        try:
            async with asyncio.timeout(remote.connect_timeout):
                if kind == "unix":
                    _, protocol = await loop.create_unix_connection(factory, str(where))
                else:
                    _, protocol = await loop.create_connection(
                        factory, remote.host, int(where), ssl=remote.tls,
                        server_hostname=remote.host if remote.tls is not None else None,
                    )  # fmt: skip
        except TimeoutError:
            raise ConnectTimeout(f"no connection within {remote.connect_timeout:g} s") from None
        return protocol

    def keep(self, connection: EngineConnection) -> None:
        """Put a connection whose answer was read whole back for the next request."""
        connection.idle_since = asyncio.get_running_loop().time()
        if len(self.idle) >= IDLE_LIMIT:
            self.idle.pop(0).close()
        self.idle.append(connection)

    def close(self) -> None:
        """Close every idle connection."""
        for connection in self.idle:
            connection.close()
        self.idle.clear()


async def post(pool: EnginePool, head: bytes, body: bytes) -> tuple[EngineConnection, ResponseHead]:
    """Send one request and wait for the answer's head; the connection carries the body.

    A reused keep-alive connection that the engine closed before answering
    anything is retried once on a fresh connection; when that one closes
    silently too, EngineSilent. (The retry never takes another idle one: an
    engine that closes its connections after streamed answers, as llama-server
    does, leaves several dead ones behind at once.)
    """
    for attempt in range(2):
        connection, reused = await pool.connect(fresh=attempt > 0)
        try:
            await connection.send(head, body)
            return connection, await connection.head()
        except EngineConnectionError as error:
            connection.close()
            if connection.got_bytes:
                raise
            if attempt or not reused:
                raise EngineSilent(str(error)) from None
        except BaseException:
            connection.close()
            raise
    raise AssertionError("unreachable")  # pragma: no cover
