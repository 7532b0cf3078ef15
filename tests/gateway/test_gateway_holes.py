"""Holes the one request path closes, through the real gateway: bombs, broken bodies, deep
JSON, and a streaming caller that stops reading."""

from __future__ import annotations

import asyncio
import gzip
import json
import socket
import time
from pathlib import Path
from typing import Any

import aiohttp
import httpx2

from gateway_harness import RunningGateway, StartGateway, fake_codex, fake_table

MARKER = "MARKER-3f9c1e-never-in-any-log"
RSS_CEILING_KB = 300 * 1024


def engine_port(gateway: RunningGateway, table: str = "a") -> int:
    section = gateway.codex.joinpath("fake.toml").read_text().split(f"[{table}]")[1]
    return int(section.split("\nport = ")[1].split("\n")[0])


def peak_rss_kb(pid: int) -> int:
    """The process's peak resident set (VmHWM), in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmHWM for {pid}")


def assert_json_error(status: int, headers: Any, body: bytes, request_id: str) -> dict[str, Any]:
    assert 400 <= status < 500, (status, body[:200])
    assert headers["Content-Type"].startswith("application/json"), headers
    assert headers["X-Request-ID"] == request_id
    error: dict[str, Any] = json.loads(body)["error"]
    assert {"message", "type", "code", "param"} <= error.keys()
    return error


def exchange(path: Path, *parts: bytes) -> bytes:
    """Send raw bytes on the gateway's socket, say no more, and read until it closes."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as raw:
        raw.settimeout(30)
        raw.connect(str(path))
        for part in parts:
            raw.sendall(part)
        raw.shutdown(socket.SHUT_WR)
        received = b""
        while chunk := raw.recv(65536):
            received += chunk
        return received


def wait_for_request_line(gateway: RunningGateway, request_id: str, deadline: float) -> None:
    """Until the gateway's request log shows this request (its log is then written out)."""
    while time.monotonic() < deadline:
        if any(line.get("request_id") == request_id for line in gateway.logged()):
            return
        time.sleep(0.05)
    raise AssertionError(f"no request-log line for {request_id}:\n{gateway.log.read_text()}")


def test_a_gzip_bomb_is_refused_as_json_and_the_gateway_stays_small(
    tmp_path: Path, start_gateway: StartGateway
) -> None:
    gateway = start_gateway(fake_codex(tmp_path / "c", fake_table("a", model="m")))
    bomb = gzip.compress(b"[" + b"{}," * 10_000_000 + b"{}]", 9)  # ~30 MB of JSON containers
    assert len(bomb) < 32 * 1024

    async def send_all() -> list[tuple[int, dict[str, str], bytes, str]]:
        connector = aiohttp.UnixConnector(path=str(gateway.socket), limit=0)
        async with aiohttp.ClientSession(connector=connector) as session:

            async def one(number: int) -> tuple[int, dict[str, str], bytes, str]:
                request_id = f"bomb-{number}"
                headers = {"Content-Encoding": "gzip", "Content-Type": "application/json",
                           "X-Request-ID": request_id}  # fmt: skip
                async with session.post("http://localhost/v1/chat/completions", data=bomb,
                                        headers=headers) as response:  # fmt: skip
                    return response.status, dict(response.headers), await response.read(), \
                        request_id  # fmt: skip

            return list(await asyncio.gather(*(one(n) for n in range(4))))

    answers = asyncio.run(send_all())
    peak = peak_rss_kb(gateway.process.pid)
    assert peak < RSS_CEILING_KB, f"the gateway's resident set peaked at {peak // 1024} MB"
    for status, headers, body, request_id in answers:
        assert_json_error(status, headers, body, request_id)
    assert gateway.http().post("/v1/chat/completions",
                               json={"model": "m", "messages": []}).status_code == 200  # fmt: skip


def test_a_broken_chunked_body_is_never_logged(tmp_path: Path, start_gateway: StartGateway) -> None:
    gateway = start_gateway(fake_codex(tmp_path / "c", fake_table("a", model="m")))
    document = json.dumps({"model": "m", "prompt": MARKER}).encode()
    head = (b"POST /v1/completions HTTP/1.1\r\nHost: localhost\r\n"
            b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n"
            b"X-Request-ID: broken-chunks\r\n\r\n")  # fmt: skip
    bodies = [
        b"4g " + document + b"\r\n" + document + b"\r\n0\r\n\r\n",  # a size that is not hex
        b"%x\r\n" % len(document) + document + b"XX" + document + b"\r\n0\r\n\r\n",  # no CRLF
        b"%x\r\n" % (len(document) + 9) + document + b"\r\n",  # the body ends too soon
    ]
    # Sent at once, the parser meets the broken chunk with the headers; sent apart, the
    # handler does while reading the body. Either way: a JSON error, and no marker logged.
    for parts in [(head + body,) for body in bodies] + [(head, body) for body in bodies]:
        answer = exchange(gateway.socket, *parts)
        if answer:
            status_line, _, rest = answer.partition(b"\r\n")
            header_text, _, payload = rest.partition(b"\r\n\r\n")
            assert b"application/json" in header_text.lower(), answer[:400]
            assert b"x-request-id: " in header_text.lower(), answer[:400]
            assert MARKER.encode() not in answer  # nor is it quoted back
            assert json.loads(payload)["error"], answer[:400]
            assert int(status_line.split()[1]) in (400, 413), status_line
    after = gateway.http().post("/v1/completions", json={"model": "m", "prompt": "x"},
                                headers={"X-Request-ID": "after-broken"})  # fmt: skip
    assert after.status_code == 200
    wait_for_request_line(gateway, "after-broken", time.monotonic() + 10)
    assert MARKER not in gateway.log.read_text()


def nested_list(depth: int) -> str:
    return "[" * depth + '"x"' + "]" * depth


def nested_object(depth: int) -> str:
    return '{"a":' * depth + "{}" + "}" * depth


def test_deeply_nested_json_is_a_json_400(tmp_path: Path, start_gateway: StartGateway) -> None:
    gateway = start_gateway(fake_codex(tmp_path / "c", fake_table("a", model="m")))
    http = gateway.http()
    chat = '{"model":"m","messages":[{"role":"user","content":'
    tool = '{"model":"m","messages":[],"tools":[{"type":"function","function":{"name":"deep",'
    bodies = {
        "deep-messages": chat + nested_list(300) + "}]}",
        "deeper-messages": chat + nested_list(5000) + "}]}",  # deeper than orjson reads
        "deep-tool": tool + '"parameters":' + nested_object(300) + "}}]}",
    }
    for request_id, body in bodies.items():
        response = http.post("/v1/chat/completions", content=body.encode(),
                             headers={"Content-Type": "application/json",
                                      "X-Request-ID": request_id})  # fmt: skip
        assert response.status_code == 400, (request_id, response.text[:300])
        assert_json_error(response.status_code, response.headers, response.content, request_id)
    fine = http.post("/v1/chat/completions", json={"model": "m", "messages": [
        {"role": "user", "content": json.loads(nested_list(100))}]})  # fmt: skip
    assert fine.status_code == 200, fine.text[:300]


def test_a_streaming_caller_that_stops_reading_loses_its_slot(
    tmp_path: Path, start_gateway: StartGateway
) -> None:
    flags = ("--tokens", "5000", "--chunk-bytes", "8192")  # ~16 MB for 2048 tokens
    codex = fake_codex(tmp_path / "c", fake_table("a", *flags, model="m"))
    gateway = start_gateway(codex, "--timeout", "1",
                            clients={"gateway": {"max_parallel": 1, "queue": 0}})  # fmt: skip
    http = gateway.http()

    def ask() -> httpx2.Response:
        return http.post("/v1/chat/completions",
                         json={"model": "m", "messages": [], "max_tokens": 1})  # fmt: skip

    assert ask().status_code == 200  # the engine is up
    stats_url = f"http://127.0.0.1:{engine_port(gateway)}/fake/stats"
    document = json.dumps({"model": "m", "messages": [], "stream": True}).encode()
    request = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\n"
               b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
               % (len(document), document))  # fmt: skip
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as stalled:
        stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stalled.connect(str(gateway.socket))
        stalled.sendall(request)  # and never read
        deadline = time.monotonic() + 30
        while httpx2.get(stats_url).json()["in_flight"] != 1:
            assert time.monotonic() < deadline, "the stalled stream never reached the engine"
            time.sleep(0.05)
        busy = ask()
        assert busy.status_code == 503, busy.text  # the stalled stream holds the one slot
        began = time.monotonic()
        while (answer := ask()).status_code != 200:
            assert answer.status_code == 503, answer.text
            assert time.monotonic() - began < 20, "the stalled stream still holds its slot"
            time.sleep(0.1)
        assert busy.json()["error"]["code"] == "GATEWAY_BUSY"
        stalled.settimeout(30)
        while stalled.recv(1 << 20):  # what was buffered, then the end: the gateway closed it
            pass
    deadline = time.monotonic() + 30
    while (stats := httpx2.get(stats_url).json())["in_flight"] != 0:
        assert time.monotonic() < deadline, f"the engine still streams: {stats}"
        time.sleep(0.05)
