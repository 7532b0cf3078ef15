"""Streams through the gateway never hang: engine death, client disconnect, slow starts, load."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from pathlib import Path

import aiohttp
import httpx2

from gateway_harness import RunningGateway, StartGateway, fake_codex, fake_table


def stream_lines(gateway: RunningGateway, model: str) -> list[str]:
    body = {"model": model, "messages": [], "stream": True}
    with gateway.http().stream("POST", "/v1/chat/completions", json=body) as response:
        assert response.status_code == 200
        return [line for line in response.iter_lines() if line]


def engine_port(gateway: RunningGateway, table: str = "a") -> int:
    text = gateway.codex.joinpath("fake.toml").read_text()
    section = text.split(f"[{table}]")[1]
    return int(section.split("\nport = ")[1].split("\n")[0])


def test_engine_dying_mid_stream_ends_with_an_error_event_and_done(
    tmp_path: Path, start_gateway: StartGateway
) -> None:
    codex = fake_codex(tmp_path / "c", fake_table("a", "--die-after-chunks", "3", model="m"))
    gateway = start_gateway(codex)
    lines = stream_lines(gateway, "m")
    assert len([line for line in lines if '"delta"' in line]) == 3
    error = json.loads(lines[-2].removeprefix("data: "))
    assert error["error"]["code"] == "ENGINE_FAILED"
    assert lines[-1] == "data: [DONE]"
    first_pid = json.loads(gateway.state.keeper("a").read_text())["pid"]
    # The soulstone was marked failed: the next request restarts it.
    again = gateway.http().post("/v1/chat/completions", json={"model": "m", "messages": []})
    assert again.status_code == 200
    assert json.loads(gateway.state.keeper("a").read_text())["pid"] != first_pid
    metrics = gateway.http().get("/metrics").text
    assert 'soulstone_engine_failures_total{soulstone="a"} 1.0' in metrics


def test_client_disconnect_cancels_the_upstream_request(
    tmp_path: Path, start_gateway: StartGateway
) -> None:
    flags = ("--tokens", "200", "--token-delay-ms", "50")
    gateway = start_gateway(fake_codex(tmp_path / "c", fake_table("a", *flags, model="m")))
    body = {"model": "m", "messages": [], "stream": True}
    with gateway.http().stream("POST", "/v1/chat/completions", json=body) as response:
        first = next(line for line in response.iter_lines() if line)
        assert first.startswith("data: ")
    stats_url = f"http://127.0.0.1:{engine_port(gateway)}/fake/stats"
    deadline = time.monotonic() + 10
    stats = httpx2.get(stats_url).json()
    while stats["cancelled"] < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
        stats = httpx2.get(stats_url).json()
    assert stats["cancelled"] == 1
    assert stats["in_flight"] == 0


def test_slow_first_token_is_waited_for(tmp_path: Path, start_gateway: StartGateway) -> None:
    codex = fake_codex(tmp_path / "c", fake_table("a", "--ttft-ms", "1500", model="m"))
    gateway = start_gateway(codex)
    stream_lines(gateway, "m")  # the engine is up; now time a stream
    began = time.monotonic()
    body = {"model": "m", "messages": [], "stream": True}
    with gateway.http().stream("POST", "/v1/chat/completions", json=body) as response:
        lines = [line for line in response.iter_lines() if line]
        first_at = time.monotonic() - began
    assert first_at >= 1.4
    assert lines[-1] == "data: [DONE]"


def test_64_concurrent_streams(tmp_path: Path, start_gateway: StartGateway) -> None:
    flags = ("--tokens", "16", "--token-delay-ms", "5")
    gateway = start_gateway(fake_codex(tmp_path / "c", fake_table("a", *flags, model="m")))
    stream_lines(gateway, "m")

    async def one(session: aiohttp.ClientSession) -> list[bytes]:
        body = {"model": "m", "messages": [], "stream": True}
        async with session.post("http://localhost/v1/chat/completions", json=body) as response:
            assert response.status == 200
            return [line async for line in response.content if line.strip()]

    async def run() -> list[list[bytes]]:
        connector = aiohttp.UnixConnector(path=str(gateway.socket), limit=0)
        async with aiohttp.ClientSession(connector=connector) as session:
            return await asyncio.gather(*(one(session) for _ in range(64)))

    results = asyncio.run(run())
    assert len(results) == 64
    for lines in results:
        assert lines[-1].strip() == b"data: [DONE]"
        assert sum(1 for line in lines if b'"delta"' in line) == 17  # 16 tokens + finish


def test_sigterm_lets_a_stream_in_flight_finish(
    tmp_path: Path, start_gateway: StartGateway
) -> None:
    flags = ("--tokens", "20", "--token-delay-ms", "100")
    gateway = start_gateway(fake_codex(tmp_path / "c", fake_table("a", *flags, model="m")))
    stream_lines(gateway, "m")  # the engine is up
    body = {"model": "m", "messages": [], "stream": True}
    with gateway.http().stream("POST", "/v1/chat/completions", json=body) as response:
        lines = response.iter_lines()
        first = next(line for line in lines if line)
        assert first.startswith("data: ")
        gateway.signal(signal.SIGTERM)
        rest = [line for line in lines if line]
    assert rest[-1] == "data: [DONE]"
    assert len(rest) == 21  # 19 more tokens, the finish chunk, [DONE]
    assert gateway.process.wait(timeout=60) == 0
