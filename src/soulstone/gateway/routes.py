"""The /v1 request path and the small endpoints: route by model, admit, forward."""

from __future__ import annotations

import time
from typing import Any

import orjson
from aiohttp import web

from soulstone.codex.models import Soulstone
from soulstone.gateway.errors import REQUEST_ID, GatewayError, error_response, from_http
from soulstone.gateway.legacy import translate_functions
from soulstone.gateway.proxy import forward
from soulstone.gateway.state import GATEWAY, Gateway
from soulstone.supervisor.schedule import Unavailable


def parse_body(body: bytes) -> dict[str, Any]:
    """The request body as a JSON object; GatewayError 400 otherwise."""
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError as error:
        raise GatewayError(400, "INVALID_JSON", f"the body is not JSON: {error}") from None
    if not isinstance(document, dict):
        raise GatewayError(400, "INVALID_JSON", "the body must be a JSON object")
    return document


def route(gateway: Gateway, document: dict[str, Any]) -> Soulstone:
    """The soulstone serving the request's `model`; GatewayError 400/404 otherwise."""
    model = document.get("model")
    if not isinstance(model, str) or not model:
        raise GatewayError(400, "MODEL_MISSING", "the request names no `model`")
    soulstone = gateway.routes.get(model)
    if soulstone is None:
        names = sorted(gateway.routes)
        raise GatewayError(
            404, "MODEL_NOT_FOUND", f"no soulstone serves the model {model!r}; "
            f"valid models: {', '.join(names)}", models=names,
        )  # fmt: skip
    return soulstone


async def generation(request: web.Request) -> web.StreamResponse:
    """POST /v1/chat/completions, /v1/completions, /v1/embeddings: route, lease, forward."""
    gateway = request.app[GATEWAY]
    correlation = gateway.correlation(request)
    began = time.perf_counter()
    model, status = "", 500
    try:
        body = await request.read()
        document = parse_body(body)
        soulstone = route(gateway, document)
        model = (
            soulstone.models[0] if document["model"] not in gateway.routes else document["model"]
        )
        if request.path == "/v1/chat/completions" and translate_functions(document):
            body = orjson.dumps(document)
        headers = {"Content-Type": "application/json", REQUEST_ID: correlation[REQUEST_ID]}
        scheduler = gateway.scheduler
        if not scheduler.admit_now(soulstone):
            await scheduler.acquire(soulstone)
        try:
            response = await forward(
                request, gateway.upstreams.session(soulstone),
                gateway.upstreams.url(soulstone, request.path), body, headers,
                document.get("stream") is True, correlation,
                lambda: engine_failed(gateway, soulstone),
            )  # fmt: skip
        finally:
            scheduler.release(soulstone)
        status = response.status
        return response
    except GatewayError as error:
        status = error.status
        return error_response(error, correlation)
    except Unavailable as error:
        status = 503
        refusal = GatewayError(503, "ENGINE_UNAVAILABLE", str(error),
                               headers={"Retry-After": str(error.retry_after)})  # fmt: skip
        return error_response(refusal, correlation)
    except web.HTTPException as error:
        status = error.status
        return error_response(from_http(error), correlation)
    finally:
        seconds = time.perf_counter() - began if model else None
        gateway.metrics.request_done(model or "-", status, seconds)


def engine_failed(gateway: Gateway, soulstone: Soulstone) -> None:
    """Note an engine that stopped answering: the next request restarts it."""
    gateway.scheduler.failed(soulstone)
    gateway.metrics.engine_failures.labels(soulstone.id).inc()


async def models(request: web.Request) -> web.Response:
    """GET /v1/models: every served model, its soulstone, and whether it runs."""
    gateway = request.app[GATEWAY]
    running = gateway.scheduler.running
    data = [
        {"id": model, "object": "model", "created": 0, "owned_by": "soulstone",
         "soulstone": s.id, "running": s.id in running}
        for s in gateway.codex.soulstones for model in s.models
    ]  # fmt: skip
    return web.Response(
        body=orjson.dumps({"object": "list", "data": data}),
        content_type="application/json", headers=gateway.correlation(request),
    )  # fmt: skip


async def health(request: web.Request) -> web.Response:
    """GET /health: the gateway answers (no identity needed)."""
    return web.Response(
        body=b'{"status":"ok"}', content_type="application/json",
        headers=request.app[GATEWAY].correlation(request),
    )  # fmt: skip


async def metrics(request: web.Request) -> web.Response:
    """GET /metrics: Prometheus exposition."""
    gateway = request.app[GATEWAY]
    return web.Response(
        body=gateway.metrics.render(),
        headers={"Content-Type": gateway.metrics.content_type, **gateway.correlation(request)},
    )


async def not_found(request: web.Request) -> web.Response:
    """Any other path or method: a JSON refusal, never aiohttp's text page."""
    known = {route.resource.canonical for route in request.app.router.routes()
             if route.resource is not None and route.method != "*"}  # fmt: skip
    if request.path in known:
        error = GatewayError(405, "METHOD_NOT_ALLOWED", f"{request.method} {request.path} "
                             "is not allowed")  # fmt: skip
    else:
        error = GatewayError(404, "NOT_FOUND", f"no such endpoint: {request.path}")
    return error_response(error, request.app[GATEWAY].correlation(request))
