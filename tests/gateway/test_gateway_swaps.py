"""Swaps between conflicting groups happen in waves: no thrash, nothing lost."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import aiohttp

from gateway_harness import StartGateway, fake_codex, fake_table


def swaps_in(metrics: str) -> float:
    match = re.search(r"^soulstone_swaps_total (\S+)$", metrics, re.MULTILINE)
    assert match is not None
    return float(match.group(1))


def test_interleaved_requests_for_conflicting_models_swap_in_waves(
    tmp_path: Path, start_gateway: StartGateway
) -> None:
    codex = fake_codex(
        tmp_path / "c",
        fake_table("a", "--slow-start", "0.3", "--token-delay-ms", "10", model="m-a", group="ga"),
        fake_table("b", "--slow-start", "0.3", "--token-delay-ms", "10", model="m-b", group="gb"),
    )
    gateway = start_gateway(codex, "--max-wait", "1")

    async def one(session: aiohttp.ClientSession, index: int) -> tuple[str, int, str]:
        await asyncio.sleep(index * 0.02)  # interleaved, arriving over 0.8 s
        model = "m-a" if index % 2 == 0 else "m-b"
        body = {"model": model, "messages": [], "max_tokens": 4}
        async with session.post("http://localhost/v1/chat/completions", json=body) as response:
            document = await response.json()
            return model, response.status, document.get("model", "")

    async def run() -> list[tuple[str, int, str]]:
        connector = aiohttp.UnixConnector(path=str(gateway.socket), limit=0)
        timeout = aiohttp.ClientTimeout(total=120)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            return await asyncio.gather(*(one(session, i) for i in range(40)))

    results = asyncio.run(run())
    assert [status for _, status, _ in results] == [200] * 40
    assert all(model == answered for model, _, answered in results)
    swaps = swaps_in(gateway.http().get("/metrics").text)
    # A naive router would swap 39 times; waves need a handful.
    assert 1 <= swaps <= 6, swaps
    stops = [e for e in gateway.logged() if e.get("event") == "stopping"]
    assert len(stops) == swaps


def test_requests_for_one_group_share_the_running_engines(
    tmp_path: Path, start_gateway: StartGateway
) -> None:
    codex = fake_codex(
        tmp_path / "c",
        fake_table("a", model="m-a", group="g"),
        fake_table("b", model="m-b", group="g"),
    )
    gateway = start_gateway(codex)
    http = gateway.http()
    for model in ("m-a", "m-b", "m-a", "m-b"):
        assert http.post("/v1/chat/completions", json={"model": model}).status_code == 200
    assert swaps_in(http.get("/metrics").text) == 0
    states = {s["id"]: s["state"] for s in http.get("/admin/status").json()["soulstones"]}
    assert states == {"a": "running", "b": "running"}
