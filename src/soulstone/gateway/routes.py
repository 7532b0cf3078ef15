"""The /v1 request path and the small endpoints: route by model, admit, forward."""

from __future__ import annotations

import asyncio
import time
import weakref
from typing import Any

import orjson
from aiohttp import web

from soulstone.codex.models import Soulstone
from soulstone.gateway.errors import (
    REQUEST_ID,
    SESSION_ID,
    GatewayError,
    error_response,
    from_http,
)
from soulstone.gateway.legacy import translate_functions
from soulstone.gateway.proxy import Exchange, forward
from soulstone.gateway.state import GATEWAY, Gateway
from soulstone.guard.budget import BudgetExceeded, fit
from soulstone.guard.clients import Client
from soulstone.guard.identity import Peer, Unknown, peer_of
from soulstone.guard.limits import Refused
from soulstone.guard.tokenize import TokenizeFailed
from soulstone.lora.hot import AdapterUnavailable
from soulstone.lora.registry import AdapterRecord
from soulstone.supervisor.schedule import Unavailable
from soulstone.tools.calls import ToolCallInvalid, asks_heartbeat, checked_answer
from soulstone.tools.heartbeat import HeartbeatRefused
from soulstone.tools.policy import ToolSchemaMismatch, check_tools
from soulstone.tools.stream import ToolStream


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
    if soulstone is None and model in gateway.adapters:
        soulstone = gateway.codex.get(gateway.adapters[model].base)
    if soulstone is None:
        names = sorted({*gateway.routes, *gateway.adapters})
        raise GatewayError(
            404, "MODEL_NOT_FOUND", f"no soulstone serves the model {model!r}; "
            f"valid models: {', '.join(names)}", models=names,
        )  # fmt: skip
    return soulstone


async def caller(gateway: Gateway, request: web.Request) -> Client:
    """The client making this request; GatewayError 401 when it is nobody we know."""
    try:
        return await gateway.guard.identities.identify(request.headers, _peer(request))
    except Unknown as error:
        raise GatewayError(401, "UNAUTHORIZED", str(error),
                           headers={"WWW-Authenticate": "Bearer"}) from None  # fmt: skip


async def check_budget(
    gateway: Gateway, soulstone: Soulstone, client: Client, document: dict[str, Any]
) -> tuple[int | None, bool]:
    """Count the prompt and fit max_tokens; return (prompt tokens, whether the body changed)."""
    counted = document
    if document.get("model") not in gateway.routes:  # an adapter: its base model's tokenizer
        counted = {**document, "model": soulstone.models[0]}
    try:
        prompt_tokens = await gateway.guard.counter.count(soulstone, counted)
    except TokenizeFailed as error:
        raise GatewayError(502, "TOKENIZE_FAILED", f"the engine could not count the prompt: "
                           f"{error}") from None  # fmt: skip
    key = "max_completion_tokens" if "max_completion_tokens" in document else "max_tokens"
    asked = document.get(key)
    if asked is not None and (not isinstance(asked, int) or isinstance(asked, bool) or asked < 1):
        raise GatewayError(400, "BAD_MAX_TOKENS", f"`{key}` must be a positive integer")
    try:
        chosen = fit(prompt_tokens, asked, gateway.guard.budget(soulstone, client.limits))
    except BudgetExceeded as error:
        raise GatewayError(
            400, "TOKEN_BUDGET_EXCEEDED", str(error), prompt_tokens=error.prompt_tokens,
            max_tokens=error.max_tokens, limit=error.limit,
        ) from None  # fmt: skip
    if chosen is not None:
        document["max_tokens"] = chosen
        return prompt_tokens, True
    return prompt_tokens, False


_NO_PEER = Peer(0, -1, -1)
_peers: weakref.WeakKeyDictionary[asyncio.BaseTransport, Peer] = weakref.WeakKeyDictionary()


def _peer(request: web.Request) -> Peer | None:
    """The Unix peer of the request's connection (read once per connection), else None."""
    transport = request.transport
    if transport is None:
        return None
    peer = _peers.get(transport)
    if peer is None:
        peer = peer_of(transport.get_extra_info("socket")) or _NO_PEER
        _peers[transport] = peer
    return None if peer is _NO_PEER else peer


async def hot_adapter(gateway: Gateway, soulstone: Soulstone, adapter: AdapterRecord) -> None:
    """Load the adapter into its engine (once), and mark it in use; GatewayError if refused."""
    assert gateway.hot is not None
    try:
        await gateway.hot.acquire(soulstone, adapter)
    except AdapterUnavailable as error:
        headers = {"Retry-After": str(error.retry_after)} if error.retry_after else None
        raise GatewayError(error.status, error.code, str(error), headers=headers) from None


def prefetch_next(gateway: Gateway, soulstone: Soulstone, session: str,
                  adapter: AdapterRecord) -> None:  # fmt: skip
    """Count the session's transition; warm (or load) the adapter likely to come next."""
    hit, following = gateway.transitions.observe(session, adapter.name)
    gateway.metrics.prefetch.labels("hit" if hit else "miss").inc()
    record = gateway.adapters.get(following) if following else None
    if record is None or gateway.hot is None or record.base != soulstone.id:
        return
    task = asyncio.create_task(gateway.hot.prefetch(soulstone, record))
    gateway.background.add(task)
    task.add_done_callback(gateway.background.discard)
    task.add_done_callback(lambda t: t.cancelled() or t.exception())


def check_request_tools(gateway: Gateway, document: dict[str, Any], model: str) -> None:
    """The request's tools must be the policy's, exactly; 400 TOOL_SCHEMA_MISMATCH otherwise."""
    try:
        check_tools(document["tools"], gateway.policy, model)
    except ToolSchemaMismatch as error:
        raise GatewayError(400, "TOOL_SCHEMA_MISMATCH", str(error), tool=error.tool,
                           pointer=error.pointer) from None  # fmt: skip


def heartbeat_asked(
    response: web.StreamResponse, transform: ToolStream | None, document: dict[str, Any]
) -> bool:
    """True when the answer carries a tool call with `request_heartbeat: true`."""
    if transform is not None:
        return transform.heartbeat
    answer = response.body if isinstance(response, web.Response) else None
    return isinstance(answer, bytes) and "tools" in document and asks_heartbeat(answer)


def admit_heartbeat(gateway: Gateway, session: str, client: Client) -> None:
    """Count a heartbeat request of the session's chain; 429 when it breaks a limit."""
    limits = gateway.policy.clients.get(client.name, gateway.policy.heartbeat)
    try:
        gateway.heartbeats.admit(session, limits)
    except HeartbeatRefused as error:
        gateway.metrics.heartbeat_refusals.labels(error.code).inc()
        headers = {"Retry-After": str(error.retry_after)} if error.retry_after else None
        raise GatewayError(429, error.code, str(error), headers=headers) from None


def tool_stream(
    gateway: Gateway, request: web.Request, document: dict[str, Any], soulstone: Soulstone
) -> ToolStream | None:
    """A whole-calls-only rewriter for a streamed chat request with tools, else None."""
    hermes = soulstone.tool_parser == "hermes"
    wanted = document.get("stream") is True and ("tools" in document or hermes)
    if wanted and request.path == "/v1/chat/completions":
        return ToolStream(gateway.validators, hermes=hermes)
    return None


def checked_tool_calls(
    gateway: Gateway, request: web.Request, soulstone: Soulstone, response: web.Response
) -> web.Response:
    """Parse Hermes-style calls and validate every call's arguments; 502 when one is bad."""
    body = response.body
    assert isinstance(body, bytes)
    passthrough = request.headers.get("X-Soulstone-Tool-Validation", "").lower() == "pass"
    try:
        checked = checked_answer(body, gateway.validators, soulstone.tool_parser == "hermes",
                                 passthrough)  # fmt: skip
    except ToolCallInvalid as error:
        raise GatewayError(502, "TOOL_CALL_INVALID", str(error), problems=error.problems) from None
    if checked is body:
        return response
    return web.Response(body=checked, status=200, headers=response.headers)


def refusal(error: Refused) -> GatewayError:
    """A limit's refusal as an HTTP error with Retry-After."""
    return GatewayError(error.status, error.code, str(error),
                        headers={"Retry-After": str(error.retry_after)})  # fmt: skip


async def generation(request: web.Request) -> web.StreamResponse:
    """POST /v1/chat/completions, /v1/completions, /v1/embeddings.

    Identify the caller, route by model, check its limits and the gateway's
    queue, bring the engine up, fit the token budget, forward.
    """
    gateway = request.app[GATEWAY]
    guard = gateway.guard
    correlation = gateway.correlation(request)
    began = time.perf_counter()
    model, status, client, prompt_tokens = "", 500, None, None
    body_document: dict[str, Any] | None = None
    exchange = Exchange()
    try:
        client = await caller(gateway, request)
        body = await request.read()
        document = body_document = parse_body(body)
        soulstone = route(gateway, document)
        model = document["model"]
        if not client.may_use(model):
            raise GatewayError(403, "MODEL_FORBIDDEN", f"{client.name} may not use {model!r}")
        changed = request.path == "/v1/chat/completions" and translate_functions(document)
        if "tools" in document:
            check_request_tools(gateway, document, model)
        session = correlation.get(SESSION_ID)
        if session:
            admit_heartbeat(gateway, session, client)
        transform = tool_stream(gateway, request, document, soulstone)
        guard.limiter.admit(client)
        try:
            await guard.slots.acquire()
            try:
                scheduler = gateway.scheduler
                if not scheduler.admit_now(soulstone):
                    await scheduler.acquire(soulstone)
                adapter = gateway.adapters.get(model) if model not in gateway.routes else None
                try:
                    if adapter is not None:
                        await hot_adapter(gateway, soulstone, adapter)
                        session = correlation.get(SESSION_ID)
                        if session:
                            prefetch_next(gateway, soulstone, session, adapter)
                    if request.path != "/v1/embeddings":
                        prompt_tokens, fitted = await check_budget(gateway, soulstone, client,
                                                                   document)  # fmt: skip
                        changed = changed or fitted
                    if changed:
                        body = orjson.dumps(document)
                    headers = {"Content-Type": "application/json",
                               REQUEST_ID: correlation[REQUEST_ID]}  # fmt: skip
                    response = await forward(
                        request, gateway.upstreams.session(soulstone),
                        gateway.upstreams.url(soulstone, request.path), body, headers,
                        document.get("stream") is True, correlation,
                        lambda: engine_failed(gateway, soulstone), guard.gateway.timeout_s,
                        exchange, transform,
                    )  # fmt: skip
                    if (
                        response.status == 200 and isinstance(response, web.Response)
                        and request.path == "/v1/chat/completions" and not document.get("stream")
                        and ("tools" in document or soulstone.tool_parser == "hermes")
                    ):  # fmt: skip
                        response = checked_tool_calls(gateway, request, soulstone, response)
                finally:
                    scheduler.release(soulstone)
                    if adapter is not None and gateway.hot is not None:
                        gateway.hot.release(soulstone, adapter.name)
            finally:
                guard.slots.release()
        finally:
            used = exchange.tokens
            if used is None and exchange.events:
                used = (prompt_tokens or 0) + exchange.events
            guard.limiter.finish(client, used or 0)
        status = response.status
        if session and status == 200 and request.path == "/v1/chat/completions":
            gateway.heartbeats.answered(session, heartbeat_asked(response, transform, document))
        return response
    except GatewayError as error:
        status = error.status
        return error_response(error, correlation)
    except Refused as error:
        status = error.status
        return error_response(refusal(error), correlation)
    except Unavailable as error:
        status = 503
        unavailable = GatewayError(503, "ENGINE_UNAVAILABLE", str(error),
                                   headers={"Retry-After": str(error.retry_after)})  # fmt: skip
        return error_response(unavailable, correlation)
    except web.HTTPException as error:
        status = error.status
        return error_response(from_http(error), correlation)
    finally:
        seconds = time.perf_counter() - began
        gateway.metrics.request_done(model or "-", status, seconds if model else None)
        gateway.requests_log.write(
            request_id=correlation[REQUEST_ID], session_id=correlation.get(SESSION_ID),
            client=client.name if client else None, model=model or None, status=status,
            prompt_tokens=prompt_tokens, total_tokens=exchange.tokens,
            ms=round(seconds * 1000, 2),
            content=_opted_in_content(client, body_document),
        )  # fmt: skip


def _opted_in_content(client: Client | None, document: dict[str, Any] | None) -> Any:
    """The request's text, only for a client that opted in to content logging."""
    if client is None or not client.log_content or document is None:
        return None
    return document.get("messages") or document.get("prompt") or document.get("input")


def engine_failed(gateway: Gateway, soulstone: Soulstone) -> None:
    """Note an engine that stopped answering: the next request restarts it."""
    gateway.scheduler.failed(soulstone)
    gateway.metrics.engine_failures.labels(soulstone.id).inc()


async def _guarded(request: web.Request, admin: bool) -> tuple[Gateway, Client]:
    gateway = request.app[GATEWAY]
    client = await caller(gateway, request)
    if admin and not client.admin:
        raise GatewayError(403, "ADMIN_ONLY", f"{client.name} is not an admin client")
    return gateway, client


async def models(request: web.Request) -> web.Response:
    """GET /v1/models: the models this client may use, their soulstone, whether it runs."""
    try:
        gateway, client = await _guarded(request, admin=False)
    except GatewayError as error:
        return error_response(error, request.app[GATEWAY].correlation(request))
    running = gateway.scheduler.running
    data = [
        {"id": model, "object": "model", "created": 0, "owned_by": "soulstone",
         "soulstone": s.id, "running": s.id in running}
        for s in gateway.codex.soulstones for model in s.models if client.may_use(model)
    ]  # fmt: skip
    for name, record in sorted(gateway.adapters.items()):
        base = gateway.codex.get(record.base)
        if base is not None and client.may_use(name):
            data.append({"id": name, "object": "model", "created": int(record.created),
                         "owned_by": "soulstone", "parent": base.models[0], "soulstone": base.id,
                         "running": base.id in running, "adapter": True,
                         "state": gateway.adapter_state(record)})  # fmt: skip
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
    """GET /metrics: Prometheus exposition (admin clients only)."""
    try:
        gateway, _client = await _guarded(request, admin=True)
    except GatewayError as error:
        return error_response(error, request.app[GATEWAY].correlation(request))
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
