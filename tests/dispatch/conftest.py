"""Builders for in-process tests of the request path: a fake engine in this event loop, a fake
runtime for the supervisor, a fake clock, and real Guard, limits, heartbeats and scheduler."""

from __future__ import annotations

import asyncio
import io
import json
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from fakes.fake_engine import token_count
from helpers import codex_of
from soulstone.codex.models import Health, Soulstone
from soulstone.dispatch.call import Endpoint, Entry
from soulstone.dispatch.path import Outcome, RequestPath
from soulstone.dispatch.services import Services
from soulstone.guard.clients import Client, ClientDecl, ClientsDecl, LimitsDecl, client_of
from soulstone.guard.guard import Guard
from soulstone.guard.identity import Peer
from soulstone.guard.limits import ClientLimiter
from soulstone.guard.tokenize import TokenCounter
from soulstone.observe.logging import RequestLog, make_logger
from soulstone.observe.metrics import Metrics
from soulstone.observe.trace import Tracer
from soulstone.runtimes.base import EngineState, EngineStatus
from soulstone.runtimes.state import StateFolder
from soulstone.runtimes.upstream import Upstreams
from soulstone.supervisor.schedule import Scheduler
from soulstone.supervisor.supervisor import Supervisor
from soulstone.tools.heartbeat import Heartbeats
from soulstone.tools.policy import Policy, default_policy

MODELS = ("m", "n")  # both served by the one soulstone "a"
OWN_PEER = Peer(os.getpid(), os.getuid(), os.getgid())  # the gateway's own user: the owner
USAGE_TOTAL = 12  # what the fake engine reports as usage.total_tokens


def peer(uid: int) -> Peer:
    """Another Unix user (never the gateway's own, which is always the owner)."""
    assert uid != os.getuid()
    return Peer(-1, uid, uid)


class Clock:
    """A fake monotonic clock backed by a list: the last value is now."""

    def __init__(self) -> None:
        self.times = [1000.0]

    def __call__(self) -> float:
        return self.times[-1]

    def advance(self, seconds: float) -> None:
        self.times.append(self.times[-1] + seconds)


@dataclass
class FakeRuntime:
    """Start and stop only mark state; the fake engine (always listening) answers health."""

    name: Any = "process"
    states: dict[str, EngineState] = field(default_factory=dict)
    starts: int = 0

    def start(self, soulstone: Soulstone) -> None:
        self.states[soulstone.id] = "starting"
        self.starts += 1

    def stop(self, soulstone: Soulstone) -> None:
        self.states[soulstone.id] = "stopped"

    def status(self, soulstone: Soulstone) -> EngineStatus:
        return EngineStatus(soulstone.id, self.states.get(soulstone.id, "stopped"))

    def mark_healthy(self, soulstone: Soulstone) -> None:
        self.states[soulstone.id] = "running"

    def details(self, found: EngineStatus) -> EngineStatus:
        return found

    def log_tail(self, soulstone: Soulstone, lines: int = 20) -> str:
        return ""

    def log_command(self, soulstone: Soulstone, follow: bool) -> list[str] | None:
        return None


def _sse(document: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(document).encode() + b"\n\n"


class FakeEngine:
    """An OpenAI-compatible engine in the test's event loop: records what it receives.

    A chat whose last message is "CALL:heartbeat" is answered with a tool call
    asking for a heartbeat; a stream sends `chunks` chunks of about
    `chunk_bytes` each (or, for "CALL:stream", one `ping` tool call in two
    argument deltas), then a usage chunk and `[DONE]`.
    """

    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []
        self.raw: list[bytes] = []  # the bodies as they arrived
        self.chunks = 3
        self.chunk_bytes = 0
        self.streams_open = 0
        self.stream_ended = asyncio.Event()
        self.connections: set[int] = set()  # the connections answers were asked on
        self.headers: list[dict[str, str]] = []  # each answer's request headers

    @property
    def last(self) -> dict[str, Any]:
        return self.received[-1]

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/health", self.health)
        app.router.add_post("/tokenize", self.tokenize)
        app.router.add_post("/v1/chat/completions", self.generate)
        app.router.add_post("/v1/completions", self.generate)
        return app

    async def health(self, _request: web.Request) -> web.Response:
        return web.json_response({})

    async def tokenize(self, request: web.Request) -> web.Response:
        """vLLM's shape: words of the prompt, plus 4 per chat message."""
        count = token_count(await request.json())
        return web.json_response({"count": count, "max_model_len": 8192, "tokens": []})

    async def generate(self, request: web.Request) -> web.StreamResponse:
        self.connections.add(id(request.transport))
        self.headers.append(dict(request.headers))
        self.raw.append(await request.read())
        body = await request.json()
        self.received.append(body)
        usage = {"prompt_tokens": 4, "completion_tokens": USAGE_TOTAL - 4,
                 "total_tokens": USAGE_TOTAL}  # fmt: skip
        if body.get("stream"):
            return await self._stream(request, usage)
        message: dict[str, Any] = {"role": "assistant", "content": "tok0 tok1"}
        asked = str((body.get("messages") or [{}])[-1].get("content", ""))
        if asked == "CALL:heartbeat":
            call = {
                "id": "call_1",
                "type": "function",
                "function": {"name": "ping", "arguments": '{"request_heartbeat": true}'},
            }
            message = {"role": "assistant", "content": None, "tool_calls": [call]}  # fmt: skip
        choice = {"index": 0, "finish_reason": "stop", "message": message}
        return web.json_response({"id": "fake", "object": "chat.completion",
                                  "choices": [choice], "usage": usage})  # fmt: skip

    async def _stream(self, request: web.Request, usage: dict[str, int]) -> web.StreamResponse:
        self.streams_open += 1
        self.stream_ended.clear()
        try:
            response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await response.prepare(request)
            pad = "x" * self.chunk_bytes
            deltas: list[dict[str, Any]] = [{"content": f"tok{n}{pad}"} for n in range(self.chunks)]
            body = await request.json()
            if str((body.get("messages") or [{}])[-1].get("content", "")) == "CALL:stream":
                parts = ['{"request_', 'heartbeat": false}']
                deltas = [{"tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                                           "function": {"name": "ping", "arguments": part}}]}
                          for part in parts]  # fmt: skip
            for delta in deltas:
                await response.write(_sse({"choices": [{"index": 0, "delta": delta}]}))
            await response.write(_sse({"choices": [], "usage": usage}))
            await response.write(b"data: [DONE]\n\n")
            await response.write_eof()
            return response
        finally:
            self.streams_open -= 1
            self.stream_ended.set()


@dataclass
class Rig:
    """One request path over the fake engine, with handles on everything it holds."""

    path: RequestPath
    services: Services
    engine: FakeEngine
    clock: Clock
    runtime: FakeRuntime
    log: io.StringIO
    bodies_read: int = 0

    def client(self, name: str) -> Client:
        """The resolved client of this name in the clients file in force."""
        return client_of(name, self.services.guard.config.clients[name])

    async def enter(
        self, document: Mapping[str, Any] | bytes, *, endpoint: Endpoint = "chat",
        caller: Peer = OWN_PEER, headers: Mapping[str, str] | None = None,
        session: str | None = None, request_id: str = "req-1",
    ) -> Outcome:  # fmt: skip
        """Send one request through the path, as a transport would hand it over."""
        body = document if isinstance(document, bytes) else json.dumps(document).encode()

        async def read_body() -> bytes:
            self.bodies_read += 1
            return body

        entry = Entry(endpoint, dict(headers or {}), caller, read_body, request_id, session)
        return await self.path.enter(entry)

    def assert_nothing_held(self, *clients: Client) -> None:
        """No global slot, engine admission or client concurrency is left taken."""
        slots = self.services.guard.slots
        assert (slots.in_flight, slots.waiting) == (0, 0)
        assert self.services.scheduler.in_flight() == 0
        for client in clients:
            assert self.services.guard.limiter.in_flight(client) == 0, client.name


BuildRig = Callable[..., Awaitable[Rig]]


def soulstone_on(socket: Path) -> Soulstone:
    """The one soulstone `a` (a generic engine on a Unix socket) serving MODELS."""
    return Soulstone(id="a", file="codex.toml", groups=(), engine="generic", runtime="process",
                     argv=("serve",), models=MODELS, socket=str(socket),
                     health=Health(path="/health", start_timeout=10.0, interval=0.01))  # fmt: skip


LIMITED = ClientsDecl(clients={
    "small": ClientDecl(users=[4001], limits=LimitsDecl(tokens_per_minute=150, concurrent=4)),
    "other": ClientDecl(users=[4002]),
    "narrow": ClientDecl(users=[4003], models=["n"]),
})  # fmt: skip


@pytest.fixture
async def build_rig(tmp_path: Path, short_tmp: Path) -> AsyncIterator[BuildRig]:
    """Build request paths over an in-process fake engine; close them all afterwards."""
    cleanups: list[Callable[[], Awaitable[None]]] = []

    async def build(clients: ClientsDecl | None = LIMITED, policy: Policy | None = None,
                    tracer: Tracer | None = None) -> Rig:  # fmt: skip
        engine = FakeEngine()
        runner = web.AppRunner(engine.app(), handler_cancellation=True, access_log=None)
        await runner.setup()
        cleanups.append(runner.cleanup)
        socket = short_tmp / f"engine{len(cleanups)}.sock"
        await web.UnixSite(runner, str(socket)).start()
        clock = Clock()
        runtime = FakeRuntime()
        codex = codex_of(soulstone_on(socket))
        state = StateFolder(tmp_path / f"state{len(cleanups)}")
        supervisor = Supervisor(codex, state, {"process": runtime})
        scheduler = Scheduler(supervisor, max_wait=0.0, drain_timeout=1.0, clock=clock)
        cleanups.append(scheduler.close)
        upstreams = Upstreams()
        cleanups.append(upstreams.close)
        guard = Guard(tmp_path / "clients.yaml", {}, TokenCounter(upstreams),
                      limiter=ClientLimiter(clock))  # fmt: skip
        guard.apply(clients)
        log = io.StringIO()

        async def no_reload() -> dict[str, Any]:
            return {"reloaded": False}

        services = Services(scheduler, upstreams, Metrics(), no_reload, guard,
                            requests_log=RequestLog(log), heartbeats=Heartbeats(clock))  # fmt: skip
        services.use_policy(policy or default_policy())
        path = RequestPath(services, make_logger("test", log), tracer)
        return Rig(path, services, engine, clock, runtime, log)

    yield build
    for cleanup in reversed(cleanups):
        await cleanup()
