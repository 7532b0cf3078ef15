"""`GET /v1/stream`: chat completions streamed over a WebSocket.

The client sends a chat request as a JSON text frame and receives the same
chunks as the SSE stream, one JSON chunk per text frame, then a `[DONE]`
frame; refusals come as `{"error": CODE, "message": ...}` frames. The next
request may follow on the same connection.
"""

from __future__ import annotations

from typing import Any

import aiohttp
import orjson
from aiohttp import WSMsgType, web

from soulstone.codex.models import Soulstone
from soulstone.gateway.errors import REQUEST_ID, SESSION_ID, GatewayError, error_response
from soulstone.gateway.legacy import translate_functions
from soulstone.gateway.routes import (
    admit_heartbeat,
    caller,
    check_budget,
    check_request_tools,
    engine_failed,
    parse_body,
    route,
)
from soulstone.gateway.state import GATEWAY, Gateway
from soulstone.guard.clients import Client
from soulstone.guard.limits import Refused
from soulstone.supervisor.schedule import Unavailable
from soulstone.tools.stream import ToolStream

DONE = "[DONE]"
CHAT_PATH = "/v1/chat/completions"


def _frame(code: str, message: str, **extra: Any) -> str:
    return orjson.dumps({"error": code, "message": message, **extra}).decode()


async def _frames(ws: web.WebSocketResponse, data: bytes) -> bytes:
    """Send every whole SSE event's `data:` payload as a frame; return what is left over."""
    *events, rest = data.split(b"\n\n")
    for event in events:
        for line in event.split(b"\n"):
            if line.startswith(b"data:"):
                await ws.send_str(line[5:].strip().decode())
    return rest


async def _relay(
    ws: web.WebSocketResponse, upstream: aiohttp.ClientResponse, transform: ToolStream | None
) -> bool:
    """Send each SSE `data:` payload as a frame (tool calls whole, as on SSE).

    False when the engine failed mid-stream.
    """
    pending = b""
    try:
        while chunk := await upstream.content.readany():
            pending = await _frames(ws, pending + (transform.feed(chunk) if transform else chunk))
    except (aiohttp.ClientError, OSError):
        return False
    if transform is not None:
        await _frames(ws, pending + transform.finish())
    return True


async def _serve_one(
    ws: web.WebSocketResponse, gateway: Gateway, client: Client, raw: str, request_id: str,
    session: str | None,
) -> None:  # fmt: skip
    document = parse_body(raw.encode())
    soulstone = route(gateway, document)
    if not client.may_use(document["model"]):
        raise GatewayError(403, "MODEL_FORBIDDEN",
                           f"{client.name} may not use {document['model']!r}")  # fmt: skip
    translate_functions(document)
    if "tools" in document:
        check_request_tools(gateway, document, document["model"])
    document["stream"] = True
    if session:
        admit_heartbeat(gateway, session, client)
    guard = gateway.guard
    guard.limiter.admit(client)
    try:
        await guard.slots.acquire()
        try:
            hermes = soulstone.tool_parser == "hermes"
            wanted = "tools" in document or hermes
            transform = ToolStream(gateway.validators, hermes=hermes) if wanted else None
            await _admitted(ws, gateway, client, soulstone, document, request_id, transform)
            if session:
                asked = transform is not None and transform.heartbeat
                gateway.heartbeats.answered(session, asked)
        finally:
            guard.slots.release()
    finally:
        guard.limiter.finish(client, 0)


async def _admitted(
    ws: web.WebSocketResponse, gateway: Gateway, client: Client, soulstone: Soulstone,
    document: dict[str, Any], request_id: str, transform: ToolStream | None,
) -> None:  # fmt: skip
    scheduler = gateway.scheduler
    if not scheduler.admit_now(soulstone):
        await scheduler.acquire(soulstone)
    try:
        await check_budget(gateway, soulstone, client, document)
        session = gateway.upstreams.session(soulstone)
        url = gateway.upstreams.url(soulstone, CHAT_PATH)
        headers = {"Content-Type": "application/json", REQUEST_ID: request_id}
        try:
            upstream = await session.post(url, data=orjson.dumps(document), headers=headers)
        except (aiohttp.ClientError, OSError) as error:
            engine_failed(gateway, soulstone)
            raise GatewayError(
                502, "ENGINE_UNREACHABLE", f"the engine did not answer: {error}"
            ) from None
        try:
            if upstream.status != 200:
                body = await upstream.read()
                raise GatewayError(upstream.status, "ENGINE_ERROR", body.decode(errors="replace"))
            if not await _relay(ws, upstream, transform):
                engine_failed(gateway, soulstone)
                await ws.send_str(_frame("ENGINE_FAILED", "the engine stopped mid-stream"))
                await ws.send_str(DONE)
        finally:
            upstream.release()
    finally:
        scheduler.release(soulstone)


async def stream_socket(request: web.Request) -> web.StreamResponse:
    """GET /v1/stream: one chat request per text frame, its chunks back as frames."""
    gateway = request.app[GATEWAY]
    correlation = gateway.correlation(request)
    try:
        client = await caller(gateway, request)
    except GatewayError as error:
        return error_response(error, correlation)
    ws = web.WebSocketResponse(heartbeat=30)
    ws.headers.update(correlation)
    await ws.prepare(request)
    async for message in ws:
        if message.type != WSMsgType.TEXT:
            if message.type == WSMsgType.BINARY:
                await ws.send_str(_frame("BAD_FRAME", "send each request as a JSON text frame"))
            continue
        try:
            await _serve_one(ws, gateway, client, message.data, correlation[REQUEST_ID],
                             correlation.get(SESSION_ID))  # fmt: skip
            gateway.metrics.request_done("-", 200, None)
        except GatewayError as error:
            gateway.metrics.request_done("-", error.status, None)
            await ws.send_str(_frame(error.code, error.message, **error.extra))
        except Refused as error:
            await ws.send_str(_frame(error.code, str(error), retry_after=error.retry_after))
        except Unavailable as error:
            await ws.send_str(_frame("ENGINE_UNAVAILABLE", str(error),
                                     retry_after=error.retry_after))  # fmt: skip
    return ws
