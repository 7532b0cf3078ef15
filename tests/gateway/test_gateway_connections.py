"""Connection defences: header and idle timeouts, per-peer caps, the owner's way in, TCP.

Attackers connect over TCP from other loopback addresses (127.0.0.2, ...), so
each is a peer of its own while the owner calls on the Unix socket. Every wait
is on the server closing a connection; the socket timeout only bounds a
failure.
"""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, suppress
from pathlib import Path

import httpx2
import pytest
import yaml

from gateway_harness import SCRIPT, RunningGateway, StartGateway, fake_codex, fake_table
from helpers import free_port

BOUND = 30.0  # seconds a socket waits before the test fails; never reached when all is well
FULL = b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n"
PARTIAL = b"GET /health HTTP/1.1\r\nHost: localhost\r\nX-Slow: "


def _codex(tmp_path: Path) -> Path:
    return fake_codex(tmp_path / "c", fake_table("a", model="m"))


def connect(port: int, source: str = "127.0.0.2") -> socket.socket:
    """A TCP connection to the gateway from a loopback address of the test's choosing."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.settimeout(BOUND)
    sock.bind((source, 0))
    sock.connect(("127.0.0.1", port))
    return sock


def connect_unix(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(BOUND)
    sock.connect(str(path))
    return sock


@contextmanager
def held(sockets: list[socket.socket]) -> Iterator[list[socket.socket]]:
    with ExitStack() as stack:
        for sock in sockets:
            stack.enter_context(sock)
        yield sockets


def send(sock: socket.socket, data: bytes) -> None:
    with suppress(BrokenPipeError, ConnectionResetError):  # closed by the server already
        sock.sendall(data)


def closed_by_server(sock: socket.socket) -> bool:
    """Wait until the server closes the connection: True on EOF or reset, False on an answer."""
    try:
        return sock.recv(4096) == b""
    except ConnectionResetError:
        return True


def answer(sock: socket.socket, request: bytes = FULL) -> bytes:
    """Send a request and read its whole response (Content-Length); b"" if closed instead."""
    send(sock, request)
    data = b""
    try:
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(4096)
            if not chunk:
                return b""
            data += chunk
    except ConnectionResetError:
        return b""
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-length:"))  # fmt: skip
    while len(body) < length:
        body += sock.recv(4096)
    return head


def test_slow_loris_is_cut_off_by_the_header_timeout(
    tmp_path: Path, start_gateway: StartGateway
) -> None:
    gateway = start_gateway(_codex(tmp_path), "--header-timeout", "0.5", "--idle-timeout", "300",
                            "--max-connections-per-peer", "16")  # fmt: skip
    with held([connect(gateway.tcp_port) for _ in range(40)]) as loris:
        for sock in loris:
            send(sock, PARTIAL)  # headers never finished
        with gateway.http() as owner:  # the owner, known by its uid read at accept
            assert owner.get("/v1/models").status_code == 200
        # 24 are closed at accept (over the cap), the 16 admitted after the header
        # timeout: the idle timeout (300 s) is far beyond BOUND, so it cannot be that.
        assert all(closed_by_server(sock) for sock in loris)
    with connect(gateway.tcp_port) as again:  # their places were given back
        assert answer(again).startswith(b"HTTP/1.1 200")
    assert "refusing connections" in gateway.log.read_text()


def test_the_next_request_on_a_connection_gets_the_header_timeout_too(
    tmp_path: Path, start_gateway: StartGateway
) -> None:
    gateway = start_gateway(_codex(tmp_path), "--header-timeout", "0.5", "--idle-timeout", "300")
    with connect(gateway.tcp_port) as sock:
        assert answer(sock).startswith(b"HTTP/1.1 200")
        assert answer(sock).startswith(b"HTTP/1.1 200")  # kept alive
        send(sock, PARTIAL)
        assert closed_by_server(sock)


def test_an_idle_connection_is_closed_after_the_idle_timeout(
    tmp_path: Path, start_gateway: StartGateway
) -> None:
    gateway = start_gateway(_codex(tmp_path), "--header-timeout", "300", "--idle-timeout", "0.5")
    with connect(gateway.tcp_port) as sock:
        assert answer(sock).startswith(b"HTTP/1.1 200")
        assert closed_by_server(sock)


def test_over_cap_connections_are_closed_while_others_get_answers(
    tmp_path: Path, start_gateway: StartGateway
) -> None:
    gateway = start_gateway(_codex(tmp_path), "--max-connections-per-peer", "4",
                            "--header-timeout", "300")  # fmt: skip
    with held([connect(gateway.tcp_port) for _ in range(7)]) as flood:
        answers = [answer(sock) for sock in flood]
        assert sum(a.startswith(b"HTTP/1.1 200") for a in answers) == 4
        assert answers.count(b"") == 3  # closed at accept
        with gateway.http() as owner:
            assert owner.get("/v1/models").status_code == 200
        with gateway.tcp() as keyed:  # another address, with a key
            assert keyed.get("/v1/models").status_code == 200
    logged = [e for e in gateway.logged() if e.get("event") == "refusing connections"]
    assert [e["peer"] for e in logged] == ["ip:127.0.0.2"]


def test_a_unix_user_has_a_cap_too(tmp_path: Path, start_gateway: StartGateway) -> None:
    gateway = start_gateway(_codex(tmp_path), "--max-connections-per-peer", "3", tcp=False)
    with held([connect_unix(gateway.socket) for _ in range(4)]) as mine:
        answers = [answer(sock) for sock in mine]
        assert sum(a.startswith(b"HTTP/1.1 200") for a in answers) == 3
        assert answers.count(b"") == 1


def test_a_full_gateway_still_lets_its_owner_in(
    tmp_path: Path, start_gateway: StartGateway
) -> None:
    # 256 open files at most: others may hold 128 connections; 20 addresses try 160.
    gateway = start_gateway(_codex(tmp_path), "--max-connections-per-peer", "8",
                            "--header-timeout", "300", open_files=(256, 256))  # fmt: skip
    sources = [f"127.0.0.{n}" for n in range(2, 22)]
    with held([connect(gateway.tcp_port, s) for s in sources for _ in range(8)]) as flood:
        with gateway.http() as owner:
            assert owner.get("/v1/models").status_code == 200
            assert owner.get("/v1/models").status_code == 200
        closed = sum(closed_by_server(sock) for sock in flood[128:])
        assert closed == 32  # over the gateway's limit for others
        with gateway.tcp() as keyed, pytest.raises(httpx2.TransportError):
            keyed.get("/v1/models")  # not the owner: full


def test_the_open_files_limit_is_raised_to_the_hard_limit(
    tmp_path: Path, start_gateway: StartGateway
) -> None:
    gateway = start_gateway(_codex(tmp_path), open_files=(256, 4096))
    limits = Path(f"/proc/{gateway.process.pid}/limits").read_text().splitlines()
    line = next(row for row in limits if row.startswith("Max open files"))
    assert line.split()[3:5] == ["4096", "4096"]


def _serve(gateway: RunningGateway, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`soulstone serve` on a socket of its own; expected to refuse to start."""
    command = [str(SCRIPT), "--codex", str(gateway.codex), "serve",
               "--socket", str(tmp_path / "other.sock"), *args]  # fmt: skip
    return subprocess.run(command, env=gateway.env, capture_output=True, text=True,
                          timeout=60, check=False)  # fmt: skip


def test_tcp_beyond_loopback_is_refused_without_the_flag(
    tmp_path: Path, start_gateway: StartGateway
) -> None:
    gateway = start_gateway(_codex(tmp_path), tcp=False)
    port = free_port()
    refused = _serve(gateway, tmp_path, "--tcp", f"0.0.0.0:{port}")
    assert refused.returncode == 2
    assert "--tcp-public" in refused.stderr and "not a loopback address" in refused.stderr
    no_keys = tmp_path / "no-keys.yaml"
    no_keys.write_text(yaml.safe_dump({"clients": {"me": {"users": ["root"]}}}))
    no_keys.chmod(0o600)
    refused = _serve(gateway, tmp_path, "--tcp", f"0.0.0.0:{port}", "--tcp-public",
                     "--clients", str(no_keys))  # fmt: skip
    assert refused.returncode == 2
    assert "--tcp-public" in refused.stderr and "no API key" in refused.stderr


def test_tcp_beyond_loopback_with_the_flag_and_a_key(
    tmp_path: Path, start_gateway: StartGateway
) -> None:
    for attempt in range(3):  # a free port may be taken by another socket before the bind
        port = free_port()
        try:
            gateway = start_gateway(_codex(tmp_path / str(attempt)), "--tcp", f"0.0.0.0:{port}",
                                    "--tcp-public", tcp=False)  # fmt: skip
            break
        except AssertionError as error:
            if "address already in use" not in str(error) or attempt == 2:
                raise
    with httpx2.Client(base_url=f"http://127.0.0.1:{port}", timeout=BOUND) as http:
        assert http.get("/v1/models").status_code == 401  # TCP callers need a key
        keyed = http.get("/v1/models", headers={"Authorization": f"Bearer {gateway.key}"})
        assert keyed.status_code == 200
