"""The hot routes' own protocol, over raw sockets: answers, hand-off to aiohttp, clocks.

Requests of the plain shape are answered by the hot path; the first request
of any other shape hands the connection (with the bytes already sent) to
aiohttp's server, which keeps it. Every wait is on the server answering or
closing; the socket timeout only bounds a failure.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from gateway_harness import RunningGateway, StartGateway, fake_codex, fake_table

BOUND = 30.0
CHAT = b'{"model": "m", "messages": [{"role": "user", "content": "hi"}]}'
STREAM = b'{"model": "m", "stream": true, "messages": [{"role": "user", "content": "hi"}]}'


def post(body: bytes, *extra: bytes, path: bytes = b"/v1/chat/completions") -> bytes:
    lines = [b"POST %s HTTP/1.1" % path, b"Host: localhost", b"Content-Type: application/json",
             *extra, b"Content-Length: %d" % len(body)]  # fmt: skip
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


MODELS = b"GET /v1/models HTTP/1.1\r\nHost: localhost\r\n\r\n"


class Reader:
    """Whole HTTP/1.1 responses off one socket (Content-Length or chunked)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock, self.data = sock, b""

    def _more(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise EOFError("the server closed the connection")
        self.data += chunk

    def _until(self, marker: bytes) -> bytes:
        while marker not in self.data:
            self._more()
        found, _, self.data = self.data.partition(marker)
        return found

    def _take(self, size: int) -> bytes:
        while len(self.data) < size:
            self._more()
        found, self.data = self.data[:size], self.data[size:]
        return found

    def response(self) -> tuple[int, dict[str, str], bytes]:
        head = self._until(b"\r\n\r\n").decode()
        status = int(head.split(" ", 2)[1])
        headers = {k.strip().lower(): v.strip() for k, _, v in
                   (line.partition(":") for line in head.split("\r\n")[1:])}  # fmt: skip
        if headers.get("transfer-encoding") == "chunked":
            body = b""
            while size := int(self._until(b"\r\n"), 16):
                body += self._take(size)
                self._take(2)
            self._take(2)
            return status, headers, body
        return status, headers, self._take(int(headers["content-length"]))

    def closed(self) -> bool:
        try:
            return self.sock.recv(4096) == b""
        except ConnectionResetError:
            return True


@pytest.fixture
def gateway(tmp_path: Path, start_gateway: StartGateway) -> RunningGateway:
    codex = fake_codex(tmp_path / "c", fake_table("a", model="m"))
    return start_gateway(codex, "--header-timeout", "0.5", "--idle-timeout", "300")


def connect(gateway: RunningGateway) -> tuple[socket.socket, Reader]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(BOUND)
    sock.connect(str(gateway.socket))
    return sock, Reader(sock)


def test_hot_answers_pipelined_and_split_then_aiohttp_keeps_the_connection(
    gateway: RunningGateway,
) -> None:
    sock, reader = connect(gateway)
    with sock:
        # Two hot requests in one write, the second streamed, with our own request id.
        sock.sendall(post(CHAT) + post(STREAM, b"X-Request-ID: mine-1"))
        status, headers, body = reader.response()
        assert status == 200 and headers["content-type"].startswith("application/json")
        assert len(headers["x-request-id"]) >= 16 and "date" in headers
        assert json.loads(body)["choices"][0]["message"]["content"].startswith("tok0")
        status, headers, body = reader.response()
        assert (status, headers["x-request-id"]) == (200, "mine-1")
        assert headers["content-type"].startswith("text/event-stream")
        assert body.rstrip().endswith(b"data: [DONE]")
        # A head and body in pieces.
        whole = post(CHAT)
        for piece in (whole[:10], whole[10:60], whole[60:-5], whole[-5:]):
            sock.sendall(piece)
        assert reader.response()[0] == 200
        # Another route: aiohttp takes the connection, with the hot request sent behind it.
        sock.sendall(MODELS + post(CHAT))
        status, _, body = reader.response()
        assert status == 200 and json.loads(body)["data"][0]["id"] == "m"
        assert reader.response()[0] == 200
        sock.sendall(post(b"{not json"))  # aiohttp's connection now: the same error shape
        status, headers, body = reader.response()
        assert status == 400 and json.loads(body)["error"]["code"] == "INVALID_JSON"
        assert headers["x-request-id"]


def test_refusals_have_the_error_shape_and_their_headers(gateway: RunningGateway) -> None:
    sock, reader = connect(gateway)
    with sock:
        sock.sendall(post(b'{"model": "nope"}', b"X-Conveyance-Session-ID: s-1"))
        status, headers, body = reader.response()
        assert status == 404 and json.loads(body)["error"]["code"] == "MODEL_NOT_FOUND"
        assert headers["x-conveyance-session-id"] == "s-1" and headers["x-request-id"]
        sock.sendall(post(b'{"model": "nope"}', b"X-Soulstone-Errors: flat"))
        status, _, body = reader.response()
        assert (status, json.loads(body)["error"]) == (404, "MODEL_NOT_FOUND")
    with socket.create_connection(("127.0.0.1", gateway.tcp_port), timeout=BOUND) as tcp:
        tcp.sendall(post(CHAT))  # TCP needs a key
        status, headers, body = Reader(tcp).response()
        assert status == 401 and headers["www-authenticate"] == "Bearer"
        assert json.loads(body)["error"]["code"] == "UNAUTHORIZED"


def test_other_shapes_of_a_hot_route_are_answered_by_aiohttp(gateway: RunningGateway) -> None:
    sock, reader = connect(gateway)
    with sock:
        chunked = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\n"
                   b"Transfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n0\r\n\r\n") % (
            len(CHAT), CHAT)  # fmt: skip
        sock.sendall(chunked)
        assert reader.response()[0] == 200
    sock, reader = connect(gateway)
    with sock:
        sock.sendall(post(CHAT, b"Connection: close"))
        assert reader.response()[0] == 200
        assert reader.closed()


def test_the_hot_path_times_the_next_head(gateway: RunningGateway) -> None:
    sock, reader = connect(gateway)
    with sock:
        sock.sendall(post(CHAT))
        assert reader.response()[0] == 200
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: l")  # never finished
        assert reader.closed()
