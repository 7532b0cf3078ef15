"""`GET /v1/stream`: the same chunks as SSE, one per text frame, several requests per socket."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import aiohttp

from gateway_harness import StartGateway, fake_codex, fake_table


async def frames_until_done(ws: aiohttp.ClientWebSocketResponse) -> list[str]:
    frames = []
    while True:
        message = await asyncio.wait_for(ws.receive(), 30)
        assert message.type == aiohttp.WSMsgType.TEXT
        frames.append(message.data)
        if message.data == "[DONE]":  # every request's frames end with it, errors included
            return frames


def test_websocket_streams_like_sse(tmp_path: Path, start_gateway: StartGateway) -> None:
    gateway = start_gateway(fake_codex(tmp_path / "c", fake_table("a", "--tokens", "5",
                                                                   model="m")))  # fmt: skip
    sse = gateway.http().post("/v1/chat/completions",
                              json={"model": "m", "messages": [], "stream": True})  # fmt: skip
    sse_chunks = [line.removeprefix("data: ") for line in sse.text.split("\n\n") if line]

    async def run() -> tuple[list[str], list[str], list[str], list[str], str]:
        connector = aiohttp.UnixConnector(path=str(gateway.socket))
        async with (
            aiohttp.ClientSession(connector=connector) as session,
            session.ws_connect("http://localhost/v1/stream") as ws,
        ):
            request_id = ws._response.headers.get("X-Request-ID", "")
            await ws.send_str(json.dumps({"model": "m", "messages": []}))
            first = await frames_until_done(ws)
            await ws.send_str(json.dumps({"model": "m", "messages": [], "max_tokens": 2}))
            second = await frames_until_done(ws)
            await ws.send_str("{broken")
            broken = await frames_until_done(ws)
            await ws.send_str(json.dumps({"model": "nope"}))
            unknown = await frames_until_done(ws)
            return first, second, broken, unknown, request_id

    first, second, broken, unknown, request_id = asyncio.run(run())
    assert first == sse_chunks  # the same chunks as the SSE stream, [DONE] included
    assert first[-1] == "[DONE]" and len(first) == 5 + 2
    assert [json.loads(f)["choices"][0]["delta"].get("content") for f in second[:-2]] == [
        "tok0", " tok1",
    ]  # fmt: skip
    assert json.loads(broken[0])["error"]["code"] == "INVALID_JSON" and broken[1:] == ["[DONE]"]
    assert json.loads(unknown[0])["error"]["code"] == "MODEL_NOT_FOUND"
    assert unknown[1:] == ["[DONE]"]
    assert request_id


def test_websocket_carries_whole_tool_calls(tmp_path: Path, start_gateway: StartGateway) -> None:
    from soulstone.tools.policy import DEFAULT_FUNCTIONS

    gateway = start_gateway(fake_codex(tmp_path / "c", fake_table("a", model="m")))
    tools = [{"type": "function", "function": f} for f in DEFAULT_FUNCTIONS[:2]]

    async def run() -> list[str]:
        connector = aiohttp.UnixConnector(path=str(gateway.socket))
        async with (
            aiohttp.ClientSession(connector=connector) as session,
            session.ws_connect("http://localhost/v1/stream") as ws,
        ):
            await ws.send_str(json.dumps({"model": "m", "tools": tools, "messages": [
                {"role": "user", "content": "CALL:stream"}]}))  # fmt: skip
            frames = []
            while True:
                message = await asyncio.wait_for(ws.receive(), 30)
                frames.append(message.data)
                if message.data == "[DONE]":
                    return frames

    frames = asyncio.run(run())
    parsed = [json.loads(f) for f in frames[:-1]]
    calls = [p for p in parsed if "choices" in p and p["choices"][0]["delta"].get("tool_calls")]
    assert len(calls) == 1
    arguments = calls[0]["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"]
    assert json.loads(arguments) == {"label": "name", "value": "Ada"}
    errors = [p for p in parsed if "error" in p]
    assert [(e["error"]["code"], e["error"]["index"]) for e in errors] == [("TOOL_CALL_INVALID", 1)]
