"""An adapter streamed over the WebSocket holds its slot: another adapter waits, never evicts it."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import aiohttp

from gateway_harness import StartGateway, fake_codex, lora_table, table_port
from lora_helpers import write_adapter

TOKENS = 8  # the fake engine's answer: TOKENS content chunks, a finish chunk, [DONE]


def test_an_adapter_streaming_over_the_websocket_is_not_evicted(
    tmp_path: Path, start_gateway: StartGateway
) -> None:
    table = lora_table("base", "--gate", "--tokens", str(TOKENS), model="base", max_loras=1)
    engine = f"http://127.0.0.1:{table_port(table)}"
    gateway = start_gateway(fake_codex(tmp_path / "c", table))
    admin = gateway.http()
    assert admin.post("/admin/up", json={"name": "base"}).status_code == 200
    for name in ("a", "b"):
        added = admin.post("/admin/lora/add", json={
            "name": name, "path": str(write_adapter(tmp_path / name)), "base": "base"})  # fmt: skip
        assert added.status_code == 200, added.text

    async def run() -> tuple[list[str], list[str], list[str]]:
        connector = aiohttp.UnixConnector(path=str(gateway.socket))
        async with (
            aiohttp.ClientSession(connector=connector) as session,
            aiohttp.ClientSession() as plain,
            session.ws_connect("http://localhost/v1/stream") as ws,
        ):

            async def state(name: str) -> str:
                async with session.get("http://localhost/admin/lora") as answer:
                    listed = await answer.json()
                return str(next(a["state"] for a in listed["adapters"] if a["name"] == name))

            async def engine_record() -> list[str]:
                async with plain.get(f"{engine}/fake/record") as answer:
                    return list((await answer.json())["record"])

            async def ask_b() -> tuple[int, Any]:
                body = {"model": "b", "messages": []}
                async with session.post("http://localhost/v1/chat/completions",
                                        json=body) as answer:  # fmt: skip
                    return answer.status, await answer.json()

            await ws.send_str(json.dumps({"model": "a", "messages": []}))
            frames = [(await asyncio.wait_for(ws.receive(), 60)).data]  # a is streaming now
            b_answer = asyncio.create_task(ask_b())
            deadline = time.monotonic() + 30
            while await state("b") != "warm":  # b reached its load: it now waits for a slot
                assert not b_answer.done(), b_answer.result()
                assert time.monotonic() < deadline, await state("b")
                await asyncio.sleep(0.05)
            assert not b_answer.done()  # b waits: it neither failed nor evicted a
            mid_stream = await engine_record()
            async with plain.post(f"{engine}/fake/open") as opened:
                assert opened.status == 200
            while frames[-1] != "[DONE]":
                message = await asyncio.wait_for(ws.receive(), 60)
                assert message.type == aiohttp.WSMsgType.TEXT, message
                frames.append(message.data)
            status, answer = await asyncio.wait_for(b_answer, 60)
            assert status == 200, answer
            return frames, mid_stream, await engine_record()

    frames, mid_stream, record = asyncio.run(run())
    assert mid_stream == ["load a", "begin a"]
    contents = [json.loads(f)["choices"][0]["delta"].get("content") for f in frames[:-1]]
    assert contents == [f" tok{i}" if i else "tok0" for i in range(TOKENS)] + [None]
    assert frames[-1] == "[DONE]"
    # a left the engine only after its stream ended; b was loaded after that, then answered.
    assert record == ["load a", "begin a", "end a", "unload a", "load b", "begin b", "end b"]
