"""`GET /v1/stream`: chat completions streamed over a WebSocket, through the request path.

The client sends a chat request as a JSON text frame and receives the same
chunks as the SSE stream, one JSON payload per text frame, then a `[DONE]`
frame; a refusal is an error frame (the error shape of SPEC C4a) followed
by `[DONE]` too. The next request may follow on the same connection.
"""

from __future__ import annotations

from aiohttp import WSMsgType, web

from soulstone.dispatch.call import REQUEST_ID, SESSION_ID, Entry, wants_flat_errors
from soulstone.errors import Refusal
from soulstone.gateway.connections import peer_of_request
from soulstone.gateway.errors import error_response
from soulstone.gateway.relay import write_frames
from soulstone.gateway.state import GATEWAY, REQUEST_PATH, correlation

HEARTBEAT_S = 30


async def stream_socket(request: web.Request) -> web.StreamResponse:
    """GET /v1/stream: one chat request per text frame, its chunks back as frames."""
    services, path = request.app[GATEWAY], request.app[REQUEST_PATH]
    ids = correlation(services, request, counted=True)
    peer = peer_of_request(request)
    try:
        client = await services.guard.identities.identify(request.headers, peer)
    except Refusal as refusal:
        flat = wants_flat_errors(request.headers, None)
        path.refuse(ids[REQUEST_ID], ids.get(SESSION_ID), "websocket", refusal, flat)
        return error_response(refusal, ids, flat)
    flat = wants_flat_errors(request.headers, client)
    ws = web.WebSocketResponse(heartbeat=HEARTBEAT_S)
    ws.headers.update(ids)
    await ws.prepare(request)
    number = 0
    async for message in ws:
        if message.type not in (WSMsgType.TEXT, WSMsgType.BINARY):
            continue
        number += 1
        request_id = f"{ids[REQUEST_ID]}.{number}"
        if message.type == WSMsgType.BINARY:
            bad = Refusal(400, "BAD_FRAME", "send each request as a JSON text frame")
            rejection = path.refuse(request_id, ids.get(SESSION_ID), "websocket", bad, flat)
            await write_frames(ws, request.transport, rejection, flat)
            continue
        body = message.data.encode()

        async def read(body: bytes = body) -> bytes:
            return body

        entry = Entry("chat", request.headers, peer, read, request_id,
                      ids.get(SESSION_ID), way="websocket", client=client,
                      force_stream=True)  # fmt: skip
        outcome = await path.enter(entry)
        await write_frames(ws, request.transport, outcome, flat)
    return ws
