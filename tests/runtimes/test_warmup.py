"""The warm-up request against real sockets, and the supervisor sending it after health."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx2
import pytest
from aiohttp import web

from conftest import MakeSupervisor
from helpers import FAKE_ENGINE, free_port, load, stone, write
from soulstone.codex.models import Soulstone, Warmup
from soulstone.runtimes.warmup import (
    CHAT_PATH,
    COMPLETION_PATH,
    REQUEST_ID_PREFIX,
    WarmupError,
    warm_up,
)
from soulstone.supervisor.plan import Target
from soulstone.supervisor.supervisor import Event

PROMPT = "a secret warm-up prompt"
WARMUP = Warmup(PROMPT, 3)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@asynccontextmanager
async def engine(routes: dict[str, Handler], socket: Path | None = None
                 ) -> AsyncIterator[Soulstone]:  # fmt: skip
    """An engine of these POST routes, on TCP or a Unix socket; the soulstone that reaches it."""
    app = web.Application()
    for path, handler in routes.items():
        app.router.add_post(path, handler)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    site = web.UnixSite(runner, str(socket)) if socket else web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    found = replace(stone("tiny"), models=("tiny-model", "alias"), port=None if socket else port,
                    socket=str(socket) if socket else None)  # fmt: skip
    try:
        yield found
    finally:
        await runner.cleanup()


def recorder(seen: list[tuple[str, dict[str, Any], str]], status: int = 200) -> Handler:
    async def handle(request: web.Request) -> web.Response:
        seen.append((request.path, await request.json(), request.headers["X-Request-ID"]))
        return web.json_response({"choices": []}, status=status)

    return handle


async def test_a_chat_completion_with_the_first_model_name(short_tmp: Path) -> None:
    seen: list[tuple[str, dict[str, Any], str]] = []
    async with engine({CHAT_PATH: recorder(seen)}, short_tmp / "e.sock") as soulstone:
        assert await warm_up(soulstone, WARMUP, 10) == CHAT_PATH
    [(_, body, request_id)] = seen
    assert body == {"model": "tiny-model", "max_tokens": 3, "stream": False,
                    "messages": [{"role": "user", "content": PROMPT}]}  # fmt: skip
    assert request_id == REQUEST_ID_PREFIX + "tiny"


async def test_an_engine_without_chat_gets_a_completion() -> None:
    seen: list[tuple[str, dict[str, Any], str]] = []
    async with engine({COMPLETION_PATH: recorder(seen)}) as soulstone:
        assert await warm_up(soulstone, WARMUP, 10) == COMPLETION_PATH
    [(_, body, _)] = seen
    assert body == {"model": "tiny-model", "max_tokens": 3, "stream": False, "prompt": PROMPT}


async def test_failures_name_the_status_or_kind_never_the_prompt() -> None:
    seen: list[tuple[str, dict[str, Any], str]] = []
    async with engine({CHAT_PATH: recorder(seen, 500), COMPLETION_PATH: recorder(seen)}) as s:
        with pytest.raises(WarmupError, match=f"{CHAT_PATH} answered HTTP 500") as caught:
            await warm_up(s, WARMUP, 10)
    assert [path for path, _, _ in seen] == [CHAT_PATH]  # an engine error is no missing chat
    assert PROMPT not in str(caught.value)
    gone = replace(stone("gone"), port=free_port())
    with pytest.raises(WarmupError, match="cannot reach the engine"):
        await warm_up(gone, WARMUP, 10)


async def test_an_engine_that_does_not_answer_in_time() -> None:
    release = asyncio.Event()

    async def hang(_request: web.Request) -> web.Response:
        await release.wait()
        return web.json_response({"choices": []})

    async with engine({CHAT_PATH: hang}) as soulstone:
        with pytest.raises(WarmupError, match=r"no answer within 0\.2 s"):
            await warm_up(soulstone, WARMUP, 0.2)
        release.set()  # the handler ends: the engine stops at once


def fake_with_warmup(name: str, *flags: str, port: int, warmup: str) -> str:
    command = [sys.executable, str(FAKE_ENGINE), "--model", name, *flags, "--port", str(port)]
    return (f"[{name}]\nexec = {json.dumps(command)}\nport = {port}\nwarmup = {warmup}\n"
            'health = { path = "/health", start_timeout = 15, interval = 0.05 }\n')  # fmt: skip


def engine_calls(port: int) -> list[dict[str, Any]]:
    return list(httpx2.get(f"http://127.0.0.1:{port}/fake/calls").json()["calls"])


async def test_the_supervisor_warms_what_it_started_once_healthy(
    tmp_path: Path, make_supervisor: MakeSupervisor
) -> None:
    port = free_port()
    table = fake_with_warmup("a", port=port, warmup=f'{{ prompt = "{PROMPT}", max_tokens = 2 }}')
    codex = load(write(tmp_path / "codex", {"a.toml": table}))
    events: list[Event] = []
    supervisor = make_supervisor(codex, events=events)
    await supervisor.manifest(Target("soulstone", "a"))
    kinds = [e.kind for e in events]
    assert kinds[-2:] == ["healthy", "warmed"] and events[-1].detail == CHAT_PATH
    [call] = engine_calls(port)
    assert call["last"] == {"role": "user", "content": PROMPT} and call["max_tokens"] == 2
    assert call["id"] == REQUEST_ID_PREFIX + "a"
    assert all(PROMPT not in e.detail for e in events)
    events.clear()
    assert (await supervisor.manifest(Target("soulstone", "a"))).noop
    assert [e.kind for e in events] == ["healthy"]  # what already ran is not warmed again
    assert len(engine_calls(port)) == 1


async def test_a_failed_warm_up_does_not_fail_the_start(
    tmp_path: Path, make_supervisor: MakeSupervisor
) -> None:
    port = free_port()
    table = fake_with_warmup("a", "--fail-first", "503", port=port, warmup="true")
    codex = load(write(tmp_path / "codex", {"a.toml": table}))
    events: list[Event] = []
    supervisor = make_supervisor(codex, events=events)
    await supervisor.manifest(Target("soulstone", "a"))
    assert events[-1].kind == "warmup_failed" and "HTTP 503" in events[-1].detail
    [a] = codex.soulstones
    assert (await supervisor.status(a)).state == "running"
    [call] = engine_calls(port)
    assert call["max_tokens"] == 1 and call["last"]["content"] == "Hello"  # the defaults
