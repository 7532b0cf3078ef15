"""The /v1 endpoints: thin adapters over the one request path, and the small endpoints."""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from soulstone.dispatch.call import (
    ENDPOINTS,
    REQUEST_ID,
    SESSION_ID,
    Endpoint,
    Entry,
    wants_flat_errors,
)
from soulstone.dispatch.services import Services
from soulstone.dispatch.stream import Stream
from soulstone.errors import Refusal
from soulstone.gateway.connections import peer_of_request
from soulstone.gateway.errors import error_response, from_http
from soulstone.gateway.observability import exposition
from soulstone.gateway.relay import whole_response, write_sse
from soulstone.gateway.state import GATEWAY, REQUEST_PATH, correlation
from soulstone.guard.clients import Client


async def read_body(request: web.Request) -> bytes:
    """The request's body, decompressed, within the app's size limit; Refusal otherwise."""
    try:
        return await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise Refusal(413, "PAYLOAD_TOO_LARGE", f"the body is larger than "
                      f"{request.client_max_size} bytes") from None  # fmt: skip
    except web.HTTPException as error:
        raise from_http(error) from None
    except Exception:  # a broken chunked or compressed body: never echo its bytes
        raise Refusal(400, "BAD_BODY", "the request body could not be read "
                      "(broken chunked encoding or compression)") from None  # fmt: skip


async def read_json_object(request: web.Request) -> dict[str, Any]:
    """A small JSON-object body (an admin or dashboard call); {} when empty, else 400."""
    raw = await request.read()
    if not raw:
        return {}
    try:
        document = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise Refusal(400, "INVALID_JSON", "the body is not JSON") from None
    if not isinstance(document, dict):
        raise Refusal(400, "INVALID_JSON", "the body must be a JSON object")
    return document


async def generation(request: web.Request) -> web.StreamResponse:
    """POST /v1/chat/completions, /v1/completions, /v1/embeddings: through the request path."""
    return await _through_path(request, ENDPOINTS[request.path])


async def council(request: web.Request) -> web.StreamResponse:
    """POST /v1/council/{name}: a council's result object, or its event stream."""
    return await _through_path(request, "council", request.match_info["name"])


async def _through_path(request: web.Request, endpoint: Endpoint,
                        council_name: str | None = None) -> web.StreamResponse:  # fmt: skip
    services = request.app[GATEWAY]
    ids = correlation(services, request, counted=True)
    entry = Entry(endpoint, request.headers, peer_of_request(request),
                  lambda: read_body(request), ids[REQUEST_ID], ids.get(SESSION_ID),
                  council=council_name)  # fmt: skip
    outcome = await request.app[REQUEST_PATH].enter(entry)
    if isinstance(outcome, Stream):
        return await write_sse(request, outcome, ids)
    return whole_response(outcome, ids)


async def caller(services: Services, request: web.Request) -> Client:
    """The client making this request; Refusal 401 when it is nobody we know."""
    return await services.guard.identities.identify(request.headers, peer_of_request(request))


async def _guarded(request: web.Request, admin: bool) -> tuple[Services, Client]:
    services = request.app[GATEWAY]
    client = await caller(services, request)
    if admin and not client.admin:
        raise Refusal(403, "ADMIN_ONLY", f"{client.name} is not an admin client")
    return services, client


async def models(request: web.Request) -> web.Response:
    """GET /v1/models: the models this client may use, their soulstone, whether it runs.

    `engine_state` (running, stopped, failed or unreachable: a remote that does
    not answer) is what a remote peer's discovery reads; OpenAI clients ignore it.
    """
    try:
        services, client = await _guarded(request, admin=False)
    except Refusal as refusal:
        return _refused(request, refusal)
    running = services.scheduler.running
    data = [
        {"id": model, "object": "model", "created": 0, "owned_by": "soulstone",
         "soulstone": s.id, "running": s.id in running,
         "engine_state": services.engine_state(s)}
        for s in services.codex.soulstones for model in services.served(s)
        if client.may_use(model) and services.routes.get(model) is s
    ]  # fmt: skip
    for name, record in sorted(services.adapters.items()):
        base = services.codex.get(record.base)
        if base is not None and client.may_use(name):
            data.append({"id": name, "object": "model", "created": int(record.created),
                         "owned_by": "soulstone", "parent": base.models[0], "soulstone": base.id,
                         "running": base.id in running, "adapter": True,
                         "state": services.adapter_state(record),
                         "engine_state": services.engine_state(base)})  # fmt: skip
    councils = request.app[REQUEST_PATH].councils
    for name in councils.names(client) if councils is not None else ():
        data.append({"id": name, "object": "model", "created": 0, "owned_by": "soulstone",
                     "council": name.split("/", 1)[1]})  # fmt: skip
    return web.Response(
        body=orjson.dumps({"object": "list", "data": data}),
        content_type="application/json", headers=correlation(services, request),
    )  # fmt: skip


def _refused(request: web.Request, refusal: Refusal, client: Client | None = None) -> web.Response:
    services = request.app[GATEWAY]
    services.metrics.refused(refusal.code)
    flat = wants_flat_errors(request.headers, client)
    return error_response(refusal, correlation(services, request), flat)


async def health(request: web.Request) -> web.Response:
    """GET /health: the gateway answers (no identity needed)."""
    return web.Response(
        body=b'{"status":"ok"}', content_type="application/json",
        headers=correlation(request.app[GATEWAY], request),
    )  # fmt: skip


async def metrics(request: web.Request) -> web.Response:
    """GET /metrics: Prometheus exposition (admin clients only)."""
    try:
        services, _client = await _guarded(request, admin=True)
    except Refusal as refusal:
        return _refused(request, refusal)
    body, content_type = await exposition(services, request.headers.get("Accept", ""))
    return web.Response(body=body, headers={"Content-Type": content_type,
                                            **correlation(services, request)})  # fmt: skip


async def not_found(request: web.Request) -> web.Response:
    """Any other path or method: a JSON refusal, never aiohttp's text page."""
    known = {route.resource.canonical for route in request.app.router.routes()
             if route.resource is not None and route.method != "*"}  # fmt: skip
    if request.path in known:
        refusal = Refusal(405, "METHOD_NOT_ALLOWED", f"{request.method} {request.path} "
                          "is not allowed")  # fmt: skip
    else:
        refusal = Refusal(404, "NOT_FOUND", f"no such endpoint: {request.path}")
    return _refused(request, refusal)
