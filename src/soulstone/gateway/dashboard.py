"""The dashboard on its loopback listener: pages, JSON snapshots, live events, admin actions.

Every path needs a session (opened by a one-time token, see ui_access) and
the listener's own Host. State-changing calls also need the page's CSRF
header and its Origin (or Referer); actions need an admin client. Live
updates are server-sent events: the feed of the gateway's LiveHub, and one
engine's log, following.
"""

from __future__ import annotations

import asyncio
import importlib.resources
import re
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web

from soulstone.dispatch.refusals import error_bytes
from soulstone.dispatch.services import Services
from soulstone.errors import Refusal, SoulstoneError, UsageError
from soulstone.gateway.ui_access import Session, host_allowed, same_origin_refusal
from soulstone.gateway.ui_logs import follow_command, follow_file
from soulstone.gateway.ui_views import adapters_view, councils_view, engines_view, queue_view
from soulstone.host import gpu_memory_by_pid
from soulstone.observe.live import LiveEvent, visible
from soulstone.runtimes import procfs
from soulstone.runtimes.base import EngineStatus
from soulstone.supervisor.plan import name_target, resolve

if TYPE_CHECKING:
    from soulstone.gateway.ui_listener import Dashboard

KEEPALIVE_S = 15.0  # a comment on a quiet feed, so proxies and the browser keep it open
RETRY_MS = 2000  # how soon EventSource reconnects after the feed ends
TIMELINE_EVENTS = 300
LOG_LINES = 200
ASSET_NAME = re.compile(r"^[a-z][a-z0-9_-]*\.(js|css|svg|html)$")
CONTENT_TYPES = {"js": "text/javascript", "css": "text/css", "svg": "image/svg+xml",
                 "html": "text/html"}  # fmt: skip
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; "
    "img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}
DASHBOARD_KEY: web.AppKey[Dashboard] = web.AppKey("dashboard")
ASSETS = web.AppKey("assets", dict)
SESSION = "soulstone.ui.session"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _cookie(port: int | None) -> str:
    return f"soulstone-ui-{port}"  # cookies ignore ports: one name per listener


def _refusal(refusal: Refusal) -> web.Response:
    return web.Response(body=error_bytes(refusal, False), status=refusal.status,
                        content_type="application/json")  # fmt: skip


def _json(document: Any) -> web.Response:
    return web.Response(body=orjson.dumps(document), content_type="application/json")


def _session(request: web.Request) -> Session:
    session: Session = request[SESSION]
    return session


def _services(request: web.Request) -> Services:
    return request.app[DASHBOARD_KEY].path.services


@web.middleware
async def gatekeeper(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Host check, token for a cookie (then a clean URL), session, same origin for changes."""
    dashboard = request.app[DASHBOARD_KEY]
    port = dashboard.port or 0
    if not host_allowed(request.headers.get("Host"), port):
        return _refusal(Refusal(403, "WRONG_HOST", "the dashboard answers only to "
                                f"127.0.0.1:{port} or localhost:{port}"))  # fmt: skip
    token = request.query.get("token")
    if token is not None:
        redeemed = dashboard.access.redeem(token)
        if redeemed is None:
            return _refusal(Refusal(401, "UNAUTHORIZED", "this token is unknown, used or "
                                    "expired: run `soulstone ui` for a new URL"))  # fmt: skip
        kept = [(k, v) for k, v in request.rel_url.query.items() if k != "token"]
        clean = request.rel_url.with_query(kept)
        response = web.Response(status=302, headers={"Location": str(clean)})
        response.set_cookie(_cookie(dashboard.port), redeemed[0], httponly=True,
                            samesite="Strict", path="/")  # fmt: skip
        return response
    session = dashboard.access.session(request.cookies.get(_cookie(dashboard.port)))
    if session is None:
        return _refusal(Refusal(401, "UNAUTHORIZED", "open the URL that `soulstone ui` prints "
                                "(it carries a one-time token)"))  # fmt: skip
    if request.method not in ("GET", "HEAD"):
        refused = same_origin_refusal(request.headers, port, session)
        if refused is not None:
            return _refusal(Refusal(403, "CROSS_ORIGIN", refused))
    request[SESSION] = session
    try:
        return await handler(request)
    except Refusal as refusal:
        return _refusal(refusal)
    except UsageError as error:
        return _refusal(Refusal(404, "UNKNOWN_TARGET", str(error)))
    except SoulstoneError as error:
        return _refusal(Refusal(409, "ACTION_FAILED", str(error)))


async def _security_headers(_request: web.Request, response: web.StreamResponse) -> None:
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)


# -- pages ------------------------------------------------------------------------------


def _asset(request: web.Request, name: str) -> web.Response:
    cache = request.app[ASSETS]
    body = cache.get(name)
    if body is None:
        if not ASSET_NAME.match(name):
            raise Refusal(404, "NOT_FOUND", f"no such asset: {name}")
        resource = importlib.resources.files("soulstone.gateway") / "assets" / "ui" / name
        try:
            body = cache[name] = resource.read_bytes()
        except (FileNotFoundError, IsADirectoryError):
            raise Refusal(404, "NOT_FOUND", f"no such asset: {name}") from None
    kind = name.rsplit(".", 1)[1]
    return web.Response(body=body, headers={"Content-Type": f"{CONTENT_TYPES[kind]}; "
                                            "charset=utf-8"})  # fmt: skip


async def index(request: web.Request) -> web.Response:
    """GET /: the single page (its sections are the dashboard's pages)."""
    return _asset(request, "index.html")


async def asset(request: web.Request) -> web.Response:
    """GET /assets/NAME: the page's scripts and styles, shipped in the package."""
    return _asset(request, request.match_info["name"])


# -- snapshots --------------------------------------------------------------------------


async def me(request: web.Request) -> web.Response:
    """Who this session is, whether it may act, and the CSRF value its changes must send."""
    session = _session(request)
    dashboard = request.app[DASHBOARD_KEY]
    return _json({"client": session.client.name, "admin": session.client.admin,
                  "csrf": session.csrf, "seq": dashboard.path.services.live.last_seq,
                  "strict": dashboard.strict})  # fmt: skip


def _gpu_by_soulstone(found: list[EngineStatus]) -> dict[str, int]:
    used = gpu_memory_by_pid()
    if not used:
        return {}
    return {st.id: sum(used.get(p, 0) for p in (st.pid, *procfs.descendants(st.pid)))
            for st in found if st.pid}  # fmt: skip


async def engines(request: web.Request) -> web.Response:
    """Every soulstone's state, health and address, GPU memory when known; the conflict graph."""
    services = _services(request)
    found = await services.scheduler.supervisor.statuses()
    gpu = await asyncio.to_thread(_gpu_by_soulstone, found)
    return _json(engines_view(services, found, gpu))


async def timeline(request: web.Request) -> web.Response:
    """The recent events this viewer may see, oldest first."""
    session = _session(request)
    live = _services(request).live
    shown = [e.as_dict() for e in live.recent()
             if visible(e, session.client.name, session.client.admin)]  # fmt: skip
    return _json({"events": shown[-TIMELINE_EVENTS:], "seq": live.last_seq})


async def queue(request: web.Request) -> web.Response:
    """Waiting requests, slots in use, refusals by code over the last minutes."""
    return _json(queue_view(_services(request)))


async def adapters(request: web.Request) -> web.Response:
    """Adapters cold, warm or hot per soulstone; loads and evictions."""
    services = _services(request)
    await services.refresh_adapters()
    return _json(adapters_view(services))


async def councils(request: web.Request) -> web.Response:
    """The last council runs: each persona's time and outcome."""
    session = _session(request)
    return _json(councils_view(_services(request).live, session.client.name,
                               session.client.admin))  # fmt: skip


# -- live -------------------------------------------------------------------------------


async def _event_stream(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                           "X-Accel-Buffering": "no"})  # fmt: skip
    await response.prepare(request)
    await response.write(f"retry: {RETRY_MS}\n\n".encode())
    return response


def _frame(event: LiveEvent) -> bytes:
    return b"id: %d\ndata: %s\n\n" % (event.seq, orjson.dumps(event.as_dict()))


def _start_after(request: web.Request, newest: int) -> int:
    for value in (request.headers.get("Last-Event-ID"), request.query.get("since")):
        if value is not None and value.isdigit():
            return min(int(value), newest)
    return newest


async def events(request: web.Request) -> web.StreamResponse:
    """GET /api/events[?since=SEQ]: the live feed as server-sent events (resumes by id)."""
    session = _session(request)
    live = _services(request).live
    client, admin = session.client.name, session.client.admin
    subscription = live.subscribe()  # before the replay, so nothing falls in between
    try:
        after = _start_after(request, live.last_seq)
        response = await _event_stream(request)
        missed = live.recent(after)
        if missed and missed[0].seq > after + 1:
            await response.write(b"event: reset\ndata: {}\n\n")  # older events left the ring
        sent = after
        for old in missed:
            if visible(old, client, admin):
                await response.write(_frame(old))
            sent = old.seq
        while True:
            try:
                event = await asyncio.wait_for(subscription.next(), KEEPALIVE_S)
            except TimeoutError:
                await response.write(b": keepalive\n\n")
                continue
            if event is None:  # dropped for lagging, or the gateway stops: the page resumes
                return response
            if event.seq > sent and visible(event, client, admin):
                await response.write(_frame(event))
    except ConnectionResetError:
        return web.Response(status=499)
    finally:
        subscription.close()


def _admin(request: web.Request) -> Session:
    session = _session(request)
    if not session.client.admin:
        raise Refusal(403, "ADMIN_ONLY", f"{session.client.name} is not an admin client")
    return session


async def logs(request: web.Request) -> web.StreamResponse:
    """GET /api/logs/ID[?lines=N]: one engine's last lines, then its new ones (admins only).

    Engines' logs may hold what clients asked, so only admin clients read them.
    """
    _admin(request)
    services = _services(request)
    soulstone = services.codex.get(request.match_info["id"])
    if soulstone is None:
        raise Refusal(404, "UNKNOWN_TARGET", f"no soulstone named {request.match_info['id']!r}")
    wanted = request.query.get("lines", "")
    count = min(int(wanted), 2000) if wanted.isdigit() else LOG_LINES
    supervisor = services.scheduler.supervisor
    command = supervisor.runtime(soulstone).log_command(soulstone, True)
    lines = (follow_command(command, count) if command is not None
             else follow_file(supervisor.state.log(soulstone.id), count))  # fmt: skip
    response = await _event_stream(request)
    try:
        async for line in lines:
            await response.write(b"data: %s\n\n" % orjson.dumps({"line": line}))
    except ConnectionResetError:
        return response  # the viewer closed the panel: the feed ends here
    finally:
        await lines.aclose()
    return response


# -- actions (admin clients) ------------------------------------------------------------


async def engine_action(request: web.Request) -> web.Response:
    """POST /api/engines/ID/up|down: manifest (swapping out what conflicts) or stop one."""
    session = _admin(request)
    dashboard = request.app[DASHBOARD_KEY]
    services = dashboard.path.services
    soulstone_id, action = request.match_info["id"], request.match_info["action"]
    if services.codex.get(soulstone_id) is None:
        raise Refusal(404, "UNKNOWN_TARGET", f"no soulstone named {soulstone_id!r}")
    scheduler = services.scheduler
    dashboard.log.info("dashboard action", client=session.client.name, action=action,
                       soulstone=soulstone_id)  # fmt: skip
    if action == "up":
        targets = resolve(services.codex, name_target(services.codex, soulstone_id),
                          scheduler.running)  # fmt: skip
        await scheduler.manifest(targets)
        return _json({"up": [s.id for s in targets]})
    stopped = await scheduler.stop({soulstone_id}, "asked to stop from the dashboard")
    return _json({"stopped": sorted(stopped)})


async def adapter_action(request: web.Request) -> web.Response:
    """POST /api/adapters/NAME/load|unload: make an adapter hot, or unload it when idle."""
    session = _admin(request)
    dashboard = request.app[DASHBOARD_KEY]
    services = dashboard.path.services
    hot = services.hot
    if hot is None:
        raise Refusal(409, "NO_ADAPTERS", "this gateway runs without an adapter registry")
    name, action = request.match_info["name"], request.match_info["action"]
    await services.refresh_adapters()
    record = services.adapters.get(name)
    if record is None:
        raise Refusal(404, "UNKNOWN_ADAPTER", f"no adapter named {name!r}")
    base = services.codex.get(record.base)
    if base is None:
        raise Refusal(409, "UNKNOWN_TARGET", f"{name}'s soulstone is gone")
    dashboard.log.info("dashboard action", client=session.client.name, action=action,
                       adapter=name)  # fmt: skip
    if action == "load":
        await services.scheduler.manifest((base,))
        await hot.acquire(base, record)
        hot.release(base, record.name)
        return _json({"loaded": name})
    return _json({"unloaded": await hot.unload(base, name)})


async def nowhere(request: web.Request) -> web.Response:
    """Any other path: 404 (405 for a known path with another method)."""
    raise Refusal(404, "NOT_FOUND", f"no such page: {request.path}")


def make_dashboard_app(dashboard: Dashboard) -> web.Application:
    """The dashboard's application, served on its loopback listener only."""
    app = web.Application(middlewares=[gatekeeper], client_max_size=4096)
    app[DASHBOARD_KEY] = dashboard
    app[ASSETS] = {}
    app.on_response_prepare.append(_security_headers)
    router = app.router
    router.add_get("/", index)
    router.add_get("/assets/{name}", asset)
    router.add_get("/api/me", me)
    router.add_get("/api/engines", engines)
    router.add_get("/api/timeline", timeline)
    router.add_get("/api/queue", queue)
    router.add_get("/api/adapters", adapters)
    router.add_get("/api/councils", councils)
    router.add_get("/api/events", events)
    router.add_get("/api/logs/{id}", logs)
    router.add_post("/api/engines/{id}/{action:up|down}", engine_action)
    router.add_post("/api/adapters/{name}/{action:load|unload}", adapter_action)
    router.add_route("*", "/{tail:.*}", nowhere)
    return app
