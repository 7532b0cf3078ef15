"""POST /tokenize: a model's prompt counted by its engine (what a remote peer's budget needs).

The body names `model` and holds `messages` (the chat template applied, as
the engine applies it) or `prompt`; the answer is `{"model", "count"}`, the
shape of vLLM's `/tokenize` count. The guard rails of a model call apply:
identity (401), the client's request limits (429), its model permissions
(403), an unknown model (404); the engine is brought up as for a request.
An engine with no tokenizer endpoint gives 404 `TOKENIZE_UNSUPPORTED`.
"""

from __future__ import annotations

import orjson
from aiohttp import web

from soulstone.dispatch.call import wants_flat_errors
from soulstone.dispatch.prepare import route
from soulstone.errors import Refusal
from soulstone.gateway.connections import peer_of_request
from soulstone.gateway.errors import error_response
from soulstone.gateway.routes import read_json_object
from soulstone.gateway.state import GATEWAY, correlation
from soulstone.guard.clients import Client


async def tokenize(request: web.Request) -> web.Response:
    """POST /tokenize: `{"model", "count"}` from the model's engine."""
    services = request.app[GATEWAY]
    client: Client | None = None
    try:
        client = await services.guard.identities.identify(request.headers,
                                                          peer_of_request(request))  # fmt: skip
        services.guard.limiter.check(client)
        document = await read_json_object(request)
        model, soulstone, adapter = route(document, services.routes, services.adapters,
                                          services.codex)  # fmt: skip
        if not client.may_use(model):
            raise Refusal(403, "MODEL_FORBIDDEN", f"{client.name} may not use {model!r}",
                          param="model")  # fmt: skip
        if document.get("messages") is None and document.get("prompt") is None:
            raise Refusal(400, "NOTHING_TO_COUNT", "give `messages` or `prompt`",
                          param="messages")  # fmt: skip
        counted = document if adapter is None else {**document, "model": soulstone.models[0]}
        scheduler = services.scheduler
        if not scheduler.admit_now(soulstone):
            await scheduler.acquire(soulstone)
        try:
            count = await services.guard.counter.count(soulstone, counted)
        finally:
            scheduler.release(soulstone)
        if count is None:
            raise Refusal(404, "TOKENIZE_UNSUPPORTED", f"the engine of {model!r} has no "
                          "tokenizer endpoint soulstone knows", param="model")  # fmt: skip
    except Refusal as refusal:
        services.metrics.refused(refusal.code)
        return error_response(refusal, correlation(services, request),
                              wants_flat_errors(request.headers, client))  # fmt: skip
    return web.Response(body=orjson.dumps({"model": model, "count": count}),
                        content_type="application/json",
                        headers=correlation(services, request))  # fmt: skip
