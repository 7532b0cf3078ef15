"""The gateway application: its routes, the admin API and the WebSocket endpoint."""

from __future__ import annotations

import dataclasses

from aiohttp import web

from soulstone.codex.models import Codex, Soulstone
from soulstone.dispatch.call import ENDPOINTS
from soulstone.dispatch.path import RequestPath
from soulstone.gateway.routes import council, generation, health, metrics, models, not_found
from soulstone.gateway.state import GATEWAY, REQUEST_PATH
from soulstone.gateway.tokenize import tokenize
from soulstone.gateway.websocket import stream_socket

MAX_BODY_BYTES = 8 * 2**20  # decompressed: a gzip bomb stops here


def make_app(path: RequestPath, admin: web.Application | None = None,
             ui: web.Application | None = None) -> web.Application:  # fmt: skip
    """The aiohttp application serving this gateway (the admin API at /admin/, `ui` at /ui/)."""
    app = web.Application(client_max_size=MAX_BODY_BYTES)
    app[GATEWAY] = path.services
    app[REQUEST_PATH] = path
    for route in ENDPOINTS:
        app.router.add_post(route, generation)
    app.router.add_post("/v1/council/{name}", council)
    app.router.add_get("/v1/models", models)
    app.router.add_post("/tokenize", tokenize)
    app.router.add_get("/v1/stream", stream_socket)
    app.router.add_get("/health", health)
    app.router.add_get("/metrics", metrics)
    if admin is not None:
        app.add_subapp("/admin/", admin)
    if ui is not None:
        app.add_subapp("/ui/", ui)
    app.router.add_route("*", "/{tail:.*}", not_found)
    return app


def changed_soulstones(old: Codex, new: Codex) -> set[str]:
    """Ids whose declaration changed or disappeared (the file they live in does not count)."""

    def same(a: Soulstone, b: Soulstone | None) -> bool:
        return b is not None and dataclasses.replace(a, file="") == dataclasses.replace(b, file="")

    return {s.id for s in old.soulstones if not same(s, new.get(s.id))}
