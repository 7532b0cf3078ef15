"""The request path's HTTP/1.1 client against real sockets: framing, keep-alive, failures."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from aiohttp import web
from hypothesis import given, settings
from hypothesis import strategies as st

from soulstone.runtimes.http1 import EngineConnection, EngineConnectionError, EnginePool, post

HEAD = b"POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\nContent-Length: %d\r\n\r\n"

Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def _read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    return await reader.readexactly(length)


class RawServer:
    """A Unix-socket server that answers each request with scripted raw bytes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.connections = 0
        self.script: Script | None = None
        self.server: asyncio.Server | None = None

    async def start(self) -> None:
        self.server = await asyncio.start_unix_server(self._serve, str(self.path))

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        assert self.script is not None
        try:
            await self.script(reader, writer)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


@pytest.fixture
async def raw(tmp_path: Path) -> AsyncIterator[RawServer]:
    server = RawServer(tmp_path / "engine.sock")
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


def _answer_with(*pieces: bytes, keep_open: bool = True, requests: int = 1) -> Script:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for _ in range(requests):
            await _read_request(reader)
            for piece in pieces:
                writer.write(piece)
                await writer.drain()
        if keep_open:
            await reader.read()  # until the client closes

    return script


def _chunked(parts: list[bytes]) -> bytes:
    framed = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts if p)
    return b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n" \
        b"Content-Type: text/event-stream\r\n\r\n" + framed + b"0\r\n\r\n"  # fmt: skip


async def _ask(pool: EnginePool, body: bytes = b"{}") -> tuple[int, bytes, str | None]:
    connection, head = await post(pool, HEAD % len(body), body)
    data = await connection.read_all()
    connection.release()
    return head.status, data, head.content_type


class _Transport:
    """Just enough of a transport for feeding a connection bytes by hand."""

    def __init__(self) -> None:
        self.written = b""
        self.aborted = False

    def write(self, data: bytes) -> None:
        self.written += data

    def abort(self) -> None:
        self.aborted = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


@settings(max_examples=200, deadline=None)
@given(
    parts=st.lists(st.binary(min_size=0, max_size=300), min_size=0, max_size=6),
    cuts=st.lists(st.integers(min_value=1, max_value=40), min_size=1, max_size=40),
)
async def test_a_chunked_answer_comes_back_whole_however_the_bytes_are_split(
    parts: list[bytes], cuts: list[int]
) -> None:
    wire = _chunked(parts)
    pool = EnginePool(("unix", "/nowhere"))
    connection = EngineConnection(pool)
    connection.connection_made(_Transport())  # type: ignore[arg-type]
    await connection.send(HEAD % 2, b"{}")
    pos = 0
    for cut in [*cuts, len(wire)]:
        if pos < len(wire):
            connection.data_received(wire[pos : pos + cut])
            pos += cut
    head = await connection.head()
    assert (head.status, head.content_type) == (200, "text/event-stream")
    assert await connection.read_all() == b"".join(parts)
    connection.release()
    assert pool.idle == [connection]  # the framing ended exactly: reusable


async def test_a_chunked_answer_over_a_socket_reuses_its_connection(raw: RawServer) -> None:
    raw.script = _answer_with(_chunked([b"data: 1\n\n", b"data: 2\n\n"]), requests=2)
    pool = EnginePool(("unix", str(raw.path)))
    try:
        for _ in range(2):
            assert await _ask(pool) == (200, b"data: 1\n\ndata: 2\n\n", "text/event-stream")
        assert raw.connections == 1
    finally:
        pool.close()


async def test_content_length_answers_reuse_one_connection(raw: RawServer) -> None:
    wire = b"HTTP/1.1 404 Not Found\r\nContent-Length: 5\r\n\r\nnope!"
    raw.script = _answer_with(wire, requests=3)
    pool = EnginePool(("unix", str(raw.path)))
    try:
        for _ in range(3):
            assert await _ask(pool) == (404, b"nope!", None)
        assert raw.connections == 1
    finally:
        pool.close()


async def test_an_answer_read_until_close_ends_with_the_connection(raw: RawServer) -> None:
    raw.script = _answer_with(b"HTTP/1.0 200 OK\r\n\r\nall of it", keep_open=False)
    pool = EnginePool(("unix", str(raw.path)))
    try:
        assert await _ask(pool) == (200, b"all of it", None)
        assert pool.idle == []  # never reused: its end was the close
    finally:
        pool.close()


async def test_an_informational_answer_is_skipped(raw: RawServer) -> None:
    raw.script = _answer_with(b"HTTP/1.1 100 Continue\r\n\r\n",
                              b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")  # fmt: skip
    pool = EnginePool(("unix", str(raw.path)))
    try:
        assert await _ask(pool) == (200, b"ok", None)
    finally:
        pool.close()


@pytest.mark.parametrize(
    "wire",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",  # closed mid-body
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",  # no last chunk
        b"SMTP ready\r\n\r\n",  # not HTTP
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n",  # bad size
        b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokEXTRA",  # more than it said
    ],
)
async def test_a_broken_answer_is_an_error_and_the_connection_is_not_reused(
    raw: RawServer, wire: bytes
) -> None:
    raw.script = _answer_with(wire, keep_open=False)
    pool = EnginePool(("unix", str(raw.path)))
    try:
        with pytest.raises(EngineConnectionError):
            await _ask(pool)
        assert pool.idle == []
    finally:
        pool.close()


async def test_an_idle_connection_the_engine_closed_is_not_used_again(raw: RawServer) -> None:
    closed = asyncio.Event()

    async def once_then_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        writer.close()
        closed.set()

    raw.script = once_then_close
    pool = EnginePool(("unix", str(raw.path)))
    try:
        assert await _ask(pool) == (200, b"ok", None)
        await closed.wait()
        assert await _ask(pool) == (200, b"ok", None)  # a fresh connection, or a retry on one
        assert raw.connections == 2
    finally:
        pool.close()


async def test_a_keep_alive_connection_closed_just_before_the_request_is_retried_once(
    raw: RawServer,
) -> None:
    """The engine closes an idle connection as the request goes out: answered on a new one."""

    async def close_on_second(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        await _read_request(reader)  # the next request: dropped unanswered

    raw.script = close_on_second
    pool = EnginePool(("unix", str(raw.path)))
    try:
        assert await _ask(pool) == (200, b"ok", None)
        assert await _ask(pool) == (200, b"ok", None)
        assert raw.connections == 2
    finally:
        pool.close()


async def test_the_retry_goes_to_a_fresh_connection_not_to_another_dead_idle_one(
    raw: RawServer,
) -> None:
    """llama-server closes every connection after a streamed answer: all the idle ones are dead."""

    async def close_on_second(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        await _read_request(reader)  # the next request: dropped unanswered

    raw.script = close_on_second
    pool = EnginePool(("unix", str(raw.path)))
    try:
        assert list(await asyncio.gather(_ask(pool), _ask(pool))) == [(200, b"ok", None)] * 2
        assert len(pool.idle) == 2
        assert await _ask(pool) == (200, b"ok", None)
        assert raw.connections == 3
    finally:
        pool.close()


async def test_closing_wakes_a_pending_read_at_once(raw: RawServer) -> None:
    raw.script = _answer_with(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
    pool = EnginePool(("unix", str(raw.path)))
    try:
        connection, head = await post(pool, HEAD % 2, b"{}")
        assert head.status == 200
        reading = asyncio.ensure_future(connection.read())
        await asyncio.sleep(0)
        connection.close()
        with pytest.raises(EngineConnectionError):
            await reading
    finally:
        pool.close()


async def test_nobody_listening_is_a_connection_error(tmp_path: Path) -> None:
    pool = EnginePool(("unix", str(tmp_path / "nothing.sock")))
    with pytest.raises(OSError):
        await _ask(pool)


async def test_a_large_body_goes_out_whole_and_a_large_answer_comes_back_whole(
    tmp_path: Path,
) -> None:
    """Against aiohttp's own server over TCP: 8 MiB each way, with flow control on both."""

    async def echo(request: web.Request) -> web.StreamResponse:
        data = await request.read()
        response = web.StreamResponse()
        response.enable_chunked_encoding()
        await response.prepare(request)
        for start in range(0, len(data), 65536):
            await response.write(data[start : start + 65536])
        await response.write_eof()
        return response

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_post("/v1/chat/completions", echo)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    pool = EnginePool(("tcp", port))
    body = bytes(range(256)) * (8 * 4096)
    try:
        for _ in range(2):
            status, data, _ = await _ask(pool, body)
            assert status == 200 and data == body
        assert len(pool.idle) == 1
    finally:
        pool.close()
        await runner.cleanup()


async def test_bytes_after_the_last_chunk_break_the_connection() -> None:
    pool = EnginePool(("unix", "/nowhere"))
    connection = EngineConnection(pool)
    transport = _Transport()
    connection.connection_made(transport)  # type: ignore[arg-type]
    await connection.send(HEAD % 2, b"{}")
    connection.data_received(_chunked([b"hello"]) + b"HTTP/1.1 200 OK\r\n")
    with pytest.raises(EngineConnectionError):
        await connection.read_all()
    connection.release()
    assert pool.idle == [] and transport.aborted
