"""The header clock of a kept-alive connection, in process: when it starts and when it must not.

A real aiohttp server on a real Unix socket, with GuardedConnection as its
protocol; the handler holds its answer until the test lets it go, so the order
of bytes and answers is fixed by events, not by timing.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from soulstone.gateway.connections import ConnectionGate, ConnectionOptions, GuardedConnection

FULL = b"GET /x HTTP/1.1\r\nHost: localhost\r\n\r\n"
PARTIAL = b"GET /x HTTP/1.1\r\nHost: localhost\r\nX-Slow: "
HEADER_TIMEOUT = 0.2


@dataclass
class Server:
    """The server under test: its socket, the handler's gates and the last protocol."""

    path: Path
    entered: asyncio.Event = field(default_factory=asyncio.Event)
    release: asyncio.Event = field(default_factory=asyncio.Event)
    heard: asyncio.Event = field(default_factory=asyncio.Event)
    protocols: list[GuardedConnection] = field(default_factory=list)

    @property
    def protocol(self) -> GuardedConnection:
        return self.protocols[-1]


def listening_gate(server: Server, handler: Callable[[web.BaseRequest], Any]) -> ConnectionGate:
    heard = server.heard

    class Heard(GuardedConnection):
        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            heard.set()

    class Gate(ConnectionGate):
        def __call__(self) -> GuardedConnection:
            protocol = Heard(self)
            server.protocols.append(protocol)
            return protocol

    options = ConnectionOptions(header_timeout=HEADER_TIMEOUT, idle_timeout=300)
    return Gate(web.Server(handler), options, lambda key, reason: None)


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[Server]:
    state = Server(tmp_path / "g.sock")

    async def handler(request: web.BaseRequest) -> web.StreamResponse:
        if request.headers.get("Upgrade", "").lower() == "websocket":
            ws = web.WebSocketResponse()
            await ws.prepare(request)
            async for message in ws:
                await ws.send_str(message.data)
            return ws
        state.entered.set()
        await state.release.wait()
        return web.Response(text="ok")

    gate = listening_gate(state, handler)
    listening = await gate.listen([], None)
    listening.append(await asyncio.get_running_loop().create_unix_server(gate, str(state.path)))
    try:
        yield state
    finally:
        for each in listening:
            each.close()
            await each.wait_closed()


async def read_to_end(reader: asyncio.StreamReader) -> bytes:
    """Everything until the server closes (10 s at most: a hang is the failure)."""
    return await asyncio.wait_for(reader.read(), 10)


async def test_a_head_that_starts_while_the_last_answer_is_still_sent_is_timed(
    server: Server,
) -> None:
    reader, writer = await asyncio.open_unix_connection(str(server.path))
    writer.write(FULL)
    await server.entered.wait()  # the first request is being answered
    server.heard.clear()
    writer.write(PARTIAL)  # the next request's head begins before the answer is out
    await server.heard.wait()
    assert server.protocol._headers_due is not None  # the clock runs from its first byte
    server.release.set()
    everything = await read_to_end(reader)
    assert everything.startswith(b"HTTP/1.1 200") and everything.endswith(b"ok")
    writer.close()


async def test_body_bytes_of_a_request_start_no_clock(server: Server) -> None:
    reader, writer = await asyncio.open_unix_connection(str(server.path))
    writer.write(b"POST /x HTTP/1.1\r\nHost: localhost\r\nContent-Length: 10\r\n\r\n12345")
    await server.entered.wait()
    server.heard.clear()
    writer.write(b"678")  # still the body: its handler is reading it
    await server.heard.wait()
    assert server.protocol._headers_due is None
    writer.write(b"90")
    server.release.set()
    assert (await reader.readuntil(b"ok")).startswith(b"HTTP/1.1 200")
    writer.close()


async def test_websocket_frames_start_no_clock(server: Server) -> None:
    connector = aiohttp.UnixConnector(str(server.path))
    async with (
        aiohttp.ClientSession(connector=connector) as http,
        http.ws_connect("http://localhost/ws") as ws,
    ):
        for word in ("one", "two"):
            server.heard.clear()
            await ws.send_str(word)
            await server.heard.wait()
            assert server.protocol._headers_due is None
            assert await ws.receive_str() == word
