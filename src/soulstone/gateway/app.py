"""The gateway application: its state, its routes, and the request path."""

from __future__ import annotations

import dataclasses
import itertools
import os
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

from soulstone.codex.models import Codex, Soulstone
from soulstone.gateway.errors import REQUEST_ID, SESSION_ID, GatewayError, error_response, from_http
from soulstone.gateway.legacy import translate_functions
from soulstone.gateway.proxy import forward
from soulstone.observe.metrics import Metrics
from soulstone.runtimes.upstream import Upstreams
from soulstone.supervisor.schedule import Scheduler, Unavailable

MAX_BODY_BYTES = 32 * 2**20
GENERATION_PATHS = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings")


@dataclass
class Gateway:
    """Everything the request path needs, owned by one gateway process."""

    scheduler: Scheduler
    upstreams: Upstreams
    metrics: Metrics
    reload: Callable[[], Awaitable[dict[str, Any]]]
    routes: dict[str, Soulstone] = field(default_factory=dict)
    _id_prefix: str = field(default_factory=lambda: os.urandom(6).hex())
    _ids: Iterator[int] = field(default_factory=itertools.count)

    def __post_init__(self) -> None:
        self.use(self.scheduler.codex)

    @property
    def codex(self) -> Codex:
        """The codex in force."""
        return self.scheduler.codex

    def use(self, codex: Codex) -> None:
        """Route by this codex from now on."""
        self.scheduler.supervisor.codex = codex
        self.routes = {model: s for s in codex.soulstones for model in s.models}
        self.upstreams.forget()

    def correlation(self, request: web.Request) -> dict[str, str]:
        """The correlation headers of a response: the request id (generated when missing)."""
        request_id = request.headers.get(REQUEST_ID)
        if not request_id:
            request_id = f"{self._id_prefix}{next(self._ids):08x}"
            self.metrics.generated_ids.inc()
        session_id = request.headers.get(SESSION_ID)
        if session_id:
            return {REQUEST_ID: request_id, SESSION_ID: session_id}
        return {REQUEST_ID: request_id}


GATEWAY = web.AppKey("gateway", Gateway)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _document(body: bytes) -> dict[str, Any]:
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError as error:
        raise GatewayError(400, "INVALID_JSON", f"the body is not JSON: {error}") from None
    if not isinstance(document, dict):
        raise GatewayError(400, "INVALID_JSON", "the body must be a JSON object")
    return document


def _route(gateway: Gateway, document: dict[str, Any]) -> Soulstone:
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
        document = _document(body)
        soulstone = _route(gateway, document)
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
                lambda: _engine_failed(gateway, soulstone),
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


def _engine_failed(gateway: Gateway, soulstone: Soulstone) -> None:
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


def make_app(gateway: Gateway, admin: web.Application | None = None) -> web.Application:
    """The aiohttp application serving this gateway (the admin API mounted at /admin/)."""
    app = web.Application(client_max_size=MAX_BODY_BYTES)
    app[GATEWAY] = gateway
    for path in GENERATION_PATHS:
        app.router.add_post(path, generation)
    app.router.add_get("/v1/models", models)
    app.router.add_get("/health", health)
    app.router.add_get("/metrics", metrics)
    if admin is not None:
        app.add_subapp("/admin/", admin)
    app.router.add_route("*", "/{tail:.*}", not_found)
    return app


def changed_soulstones(old: Codex, new: Codex) -> set[str]:
    """Ids whose declaration changed or disappeared (the file they live in does not count)."""

    def same(a: Soulstone, b: Soulstone | None) -> bool:
        return b is not None and dataclasses.replace(a, file="") == dataclasses.replace(b, file="")

    return {s.id for s in old.soulstones if not same(s, new.get(s.id))}
