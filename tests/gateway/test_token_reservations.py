"""Tokens per minute hold under concurrency (SPEC C4a): admission reserves the worst case."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import aiohttp
import httpx2

from gateway_harness import StartGateway, fake_codex, fake_table, keyed, table_port

REQUESTS = 32
MAX_TOKENS = 8
PER_REQUEST = 4 + MAX_TOKENS  # the fake engine counts 4 tokens for one empty message
FITS = 4  # requests the tokens-per-minute limit has room for


def test_concurrent_first_requests_cannot_pass_a_token_limit_together(
    tmp_path: Path, start_gateway: StartGateway
) -> None:
    table = fake_table("a", "--gate", "--tokens", str(MAX_TOKENS), model="m")
    engine = f"http://127.0.0.1:{table_port(table)}"
    key, client = keyed("burst", limits={"tokens_per_minute": FITS * PER_REQUEST})
    gateway = start_gateway(fake_codex(tmp_path / "c", table), "--max-parallel", str(REQUESTS),
                            clients={"clients": client}, with_harness=True)  # fmt: skip
    assert gateway.tcp().post("/admin/up", json={"name": "a"}).status_code == 200
    body = {"model": "m", "messages": [{"role": "user", "content": ""}],
            "max_tokens": MAX_TOKENS, "stream": True}  # fmt: skip

    async def run() -> list[tuple[int, Any]]:
        headers = {"Authorization": f"Bearer {key}"}
        url = f"http://127.0.0.1:{gateway.tcp_port}/v1/chat/completions"
        async with (
            aiohttp.ClientSession(headers=headers) as session,
            aiohttp.ClientSession() as plain,
        ):

            async def one() -> tuple[int, Any]:
                async with session.post(url, json=body) as answer:
                    if answer.status == 200:
                        return 200, await answer.text()
                    return answer.status, await answer.json()

            async def held() -> int:  # admitted requests the engine holds (after one chunk)
                async with plain.get(f"{engine}/fake/stats") as answer:
                    return int((await answer.json())["in_flight"])

            requests = [asyncio.create_task(one()) for _ in range(REQUESTS)]
            deadline = time.monotonic() + 60
            # Every request is either answered (refused) or held in flight by the engine: the
            # admitted ones were all in flight at once before any of them was settled.
            while sum(r.done() for r in requests) + await held() < REQUESTS:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.05)
            async with plain.post(f"{engine}/fake/open") as opened:
                assert opened.status == 200
            return list(await asyncio.gather(*requests))

    results = asyncio.run(run())
    answered = [text for status, text in results if status == 200]
    refused = [(status, document["error"]["code"]) for status, document in results
               if status != 200]  # fmt: skip
    # At most what fits, + one reservation's worth (a request is admitted while under the
    # limit). Without reservations every one of the 32 is admitted (each alone fits), so the
    # upper bound fails; the first request always fits, so at least one is answered.
    assert 1 <= len(answered) <= FITS + 1, len(answered)
    assert len(refused) == REQUESTS - len(answered) >= REQUESTS - FITS - 1
    assert all(text.endswith("data: [DONE]\n\n") for text in answered)
    assert set(refused) == {(429, "TOKEN_RATE_LIMITED")}
    assert httpx2.get(f"{engine}/fake/stats").json()["requests"] == len(answered)
