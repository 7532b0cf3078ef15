"""One request path for every way in (SPEC C4a): every guard rail refuses alike on all of them.

One table of refusals, each sent as a whole HTTP request, as an SSE stream
(`stream: true`) and over the WebSocket `/v1/stream`: the same error code,
the same request-log line (only `way` differs) and one more
`soulstone_refusals_total{code=...}` on each way. One gateway serves every
case; each case has a client of its own so that no limit spills over.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import json
import os
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

import aiohttp
import httpx2
import pytest

from gateway_harness import (
    RunningGateway,
    fake_codex,
    fake_table,
    gateway_starter,
    keyed,
    lora_table,
    refusal_counts,
    request_lines,
    table_port,
)
from lora_helpers import write_adapter
from soulstone.tools.policy import DEFAULT_FUNCTIONS

REQUEST_ID = "X-Request-ID"
TIMEOUT_S = 1  # the gateway's completion timeout (clients.yaml `gateway`)
MAX_OUTPUT_TOKENS = 64  # the gateway's max_output_tokens (clients.yaml `gateway`)
CLIENTS: dict[str, dict[str, Any]] = {
    "forbid-model": {"models": ["base"]},
    "forbid-adapter": {"models": ["base"]},  # the base model, not its adapter
    "rpm": {"limits": {"requests_per_minute": 1}},
    "tpm": {"limits": {"tokens_per_minute": 10}},
    "conc": {"limits": {"concurrent": 1}},
    "budget": {},
    "tools": {},
    "calls": {},
    "timeout": {},
}


@dataclass
class Ways:
    """The shared gateway, a key per client, and the gated engine's port."""

    gateway: RunningGateway
    keys: dict[str, str]
    drip_port: int

    def key(self, client: str | None) -> str:
        """The client's key; a key nobody holds for an unknown caller."""
        return self.keys[client] if client else f"sk-nobody-{uuid.uuid4().hex}"

    def client(self, client: str | None) -> httpx2.Client:
        """Plain HTTP over TCP with the client's key."""
        return httpx2.Client(base_url=f"http://127.0.0.1:{self.gateway.tcp_port}", timeout=60,
                             headers={"Authorization": f"Bearer {self.key(client)}"})  # fmt: skip


def chat(model: str = "base", content: str = "hi", **fields: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": content}], "max_tokens": 4,
            **fields}  # fmt: skip


def tool(index: int) -> dict[str, Any]:
    return {"type": "function", "function": copy.deepcopy(DEFAULT_FUNCTIONS[index])}


def changed_tools() -> list[dict[str, Any]]:
    changed = tool(1)
    changed["function"]["description"] = "Read whatever."
    return [tool(0), changed]


@contextmanager
def spent(ways: Ways, client: str) -> Iterator[None]:
    """One answered request first: the client's minute is used up after it."""
    with ways.client(client) as http:
        answer = http.post("/v1/chat/completions", json=chat(max_tokens=8))
    assert answer.status_code == 200, answer.text
    yield


@contextmanager
def streaming(ways: Ways, client: str) -> Iterator[None]:
    """A stream of this client's stays in flight (the engine holds it) until the block ends."""
    body = chat("drip", stream=True)
    with (
        ways.client(client) as http,
        http.stream("POST", "/v1/chat/completions", json=body) as held,
    ):
        assert held.status_code == 200
        chunks = held.iter_bytes()
        assert next(chunks)  # the first bytes: admitted, in flight
        try:
            yield
        finally:
            httpx2.post(f"http://127.0.0.1:{ways.drip_port}/fake/open")
        rest = b"".join(chunks)
    assert rest.endswith(b"data: [DONE]\n\n")


Hold = Callable[[Ways], AbstractContextManager[None]]


@dataclass(frozen=True)
class Case:
    """One refusal: what is sent, by whom, and what every way in must answer."""

    name: str
    code: str
    status: int  # the refusal's HTTP status
    client: str | None  # None: an unknown caller
    body: Callable[[bool], dict[str, Any]]  # streamed? -> the request
    logged_model: str | None  # the model the request-log line names
    hold: Hold = lambda _ways: nullcontext()  # what stands around the three requests
    at_upgrade: bool = False  # the WebSocket is refused at the upgrade (HTTP), not in a frame
    in_stream: bool = False  # streamed ways get 200, then an error event before [DONE]


CASES = [
    Case("unknown-caller", "UNAUTHORIZED", 401, None, lambda _s: chat(), None, at_upgrade=True),
    Case("forbidden-model", "MODEL_FORBIDDEN", 403, "forbid-model", lambda _s: chat("drip"),
         "drip"),
    Case("forbidden-adapter", "MODEL_FORBIDDEN", 403, "forbid-adapter", lambda _s: chat("ad"),
         "ad"),
    Case("over-rpm", "RATE_LIMITED", 429, "rpm", lambda _s: chat(), None,
         hold=lambda ways: spent(ways, "rpm")),
    Case("over-tpm", "TOKEN_RATE_LIMITED", 429, "tpm", lambda _s: chat(), None,
         hold=lambda ways: spent(ways, "tpm")),
    Case("over-concurrency", "CONCURRENCY_LIMITED", 429, "conc", lambda _s: chat(), None,
         hold=lambda ways: streaming(ways, "conc")),
    Case("token-budget", "TOKEN_BUDGET_EXCEEDED", 400, "budget",
         lambda _s: chat(max_tokens=MAX_OUTPUT_TOKENS + 1), "base"),
    Case("tool-schema", "TOOL_SCHEMA_MISMATCH", 400, "tools",
         lambda _s: chat(tools=changed_tools()), "base"),
    Case("tool-call", "TOOL_CALL_INVALID", 502, "calls",
         lambda streamed: chat(content="CALL:stream" if streamed else "CALL:schema",
                               tools=[tool(0), tool(1)]),
         "base", in_stream=True),
    Case("timeout", "COMPLETION_TIMEOUT", 504, "timeout", lambda _s: chat("slow"), "slow"),
]  # fmt: skip


@pytest.fixture(scope="module")
def ways(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Ways]:
    folder = tmp_path_factory.mktemp("ways")
    keys: dict[str, str] = {}
    clients: dict[str, Any] = {}
    for name, entry in CLIENTS.items():
        keys[name], declared = keyed(name, **entry)
        clients |= declared
    drip = fake_table("drip", "--gate", model="drip")
    slow = fake_table("slow", "--ttft-ms", str(TIMEOUT_S * 3000), model="slow")
    codex = fake_codex(folder / "codex", lora_table("base", model="base", max_loras=2), drip, slow)
    gateway_limits = {"timeout_s": TIMEOUT_S, "max_output_tokens": MAX_OUTPUT_TOKENS}
    with gateway_starter(folder) as start:
        gateway = start(codex, clients={"gateway": gateway_limits, "clients": clients},
                        with_harness=True)  # fmt: skip
        with gateway.tcp() as admin:
            for soulstone in ("base", "drip", "slow"):
                assert admin.post("/admin/up", json={"name": soulstone}).status_code == 200
            adapter = {"name": "ad", "path": str(write_adapter(folder / "ad")), "base": "base"}
            added = admin.post("/admin/lora/add", json=adapter)
            assert added.status_code == 200, added.text
        yield Ways(gateway, keys, table_port(drip))


@dataclass(frozen=True)
class Seen:
    """What a caller saw: the HTTP status (101: the WebSocket upgraded) and the error object."""

    status: int
    error: dict[str, Any]


def by_http(ways: Ways, case: Case, request_id: str) -> Seen:
    with ways.client(case.client) as http:
        answer = http.post("/v1/chat/completions", json=case.body(False),
                           headers={REQUEST_ID: request_id})  # fmt: skip
    assert answer.headers[REQUEST_ID] == request_id
    return Seen(answer.status_code, answer.json()["error"])


def by_sse(ways: Ways, case: Case, request_id: str) -> Seen:
    with ways.client(case.client) as http:
        answer = http.post("/v1/chat/completions", json={**case.body(True), "stream": True},
                           headers={REQUEST_ID: request_id})  # fmt: skip
    assert answer.headers[REQUEST_ID] == request_id
    if answer.status_code != 200:
        return Seen(answer.status_code, answer.json()["error"])
    events = [part.removeprefix("data: ") for part in answer.text.split("\n\n")
              if part.startswith("data: ")]  # fmt: skip
    assert events[-1] == "[DONE]", events  # the error event, then [DONE]
    return Seen(200, json.loads(events[-2])["error"])


async def frames_of(url: str, headers: dict[str, str], body: dict[str, Any]) -> list[str]:
    """Send one request over a new WebSocket; its text frames up to and with `[DONE]`."""
    async with (
        aiohttp.ClientSession() as session,
        session.ws_connect(url, headers=headers) as ws,
    ):
        await ws.send_str(json.dumps(body))
        frames: list[str] = []
        while not frames or frames[-1] != "[DONE]":
            message = await asyncio.wait_for(ws.receive(), 60)
            assert message.type == aiohttp.WSMsgType.TEXT, message
            frames.append(message.data)
        return frames


def by_websocket(ways: Ways, case: Case, request_id: str) -> Seen:
    url = f"http://127.0.0.1:{ways.gateway.tcp_port}/v1/stream"
    headers = {"Authorization": f"Bearer {ways.key(case.client)}", REQUEST_ID: request_id}
    if case.at_upgrade:  # a real handshake, read as plain HTTP: the refusal is its answer
        upgrade = {"Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13",
                   "Sec-WebSocket-Key": base64.b64encode(os.urandom(16)).decode()}  # fmt: skip
        answer = httpx2.get(url, headers={**headers, **upgrade}, timeout=60)
        assert answer.status_code != 101
        return Seen(answer.status_code, answer.json()["error"])
    frames = asyncio.run(frames_of(url, headers, case.body(True)))
    if not case.in_stream:
        assert len(frames) == 2, frames  # the error frame, then [DONE]: nothing else
    return Seen(101, json.loads(frames[-2])["error"])


WAYS: dict[str, Callable[[Ways, Case, str], Seen]] = {
    "http": by_http, "sse": by_sse, "websocket": by_websocket,
}  # fmt: skip


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_every_way_in_refuses_alike(ways: Ways, case: Case) -> None:
    seen: dict[str, Seen] = {}
    counted: dict[str, float] = {}
    ids: dict[str, str] = {}
    with case.hold(ways):
        for way, send in WAYS.items():
            request_id = f"{case.name}-{way}-{uuid.uuid4().hex[:8]}"
            before = refusal_counts(ways.gateway).get(case.code, 0)
            seen[way] = send(ways, case, request_id)
            counted[way] = refusal_counts(ways.gateway).get(case.code, 0) - before
            framed = way == "websocket" and not case.at_upgrade
            ids[way] = f"{request_id}.1" if framed else request_id  # a frame's id: socket's.N
    expected_status = {
        "http": case.status,
        "sse": 200 if case.in_stream else case.status,
        "websocket": case.status if case.at_upgrade else 101,
    }
    assert {way: s.status for way, s in seen.items()} == expected_status
    assert {way: s.error["code"] for way, s in seen.items()} == dict.fromkeys(WAYS, case.code)
    assert len({(s.error["type"], s.error.get("param")) for s in seen.values()}) == 1, seen
    assert counted == dict.fromkeys(WAYS, 1)  # one refusal counted on each way
    lines = request_lines(ways.gateway, *ids.values())
    logged = {way: lines[request_id] for way, request_id in ids.items()}
    for way, line in logged.items():
        assert line["way"] == ("websocket" if way == "websocket" else "http"), line
        assert (line.get("code"), line.get("client"), line.get("model")) == (
            case.code, case.client, case.logged_model,
        ), (way, line)  # fmt: skip
        in_stream = case.in_stream and way != "http"
        assert line["status"] == (200 if in_stream else case.status), (way, line)
