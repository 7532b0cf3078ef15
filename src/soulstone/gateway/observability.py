"""The box's one scrape target: the gateway's metrics and its engines', and the read-only listener.

`GET /metrics` answers the gateway's own figures and, appended, every running
engine's (scraped at once, within a short timeout, relabelled with
`soulstone="<id>"`). OpenMetrics (with exemplars: the request id on the
latency histogram) when the scraper asks for it. The observability listener
(`--metrics-socket` / `--metrics-tcp`) serves only that and `/health`, with
no identity, so a Prometheus server can scrape without API access.
"""

from __future__ import annotations

import grp
import os
import socket
from pathlib import Path

import aiohttp
from aiohttp import web

from soulstone.codex.models import Soulstone
from soulstone.dispatch.services import Services
from soulstone.errors import Refusal, UsageError
from soulstone.gateway.errors import error_response
from soulstone.gateway.listen import bind_unix, is_loopback, parse_tcp, prepare_socket
from soulstone.gateway.state import GATEWAY, correlation
from soulstone.observe.scrape import Fetch, render_openmetrics, render_text, scrape

SCRAPED_ENGINES = frozenset({"vllm", "llamacpp", "sglang"})  # engines with a Prometheus endpoint
OPENMETRICS = "application/openmetrics-text"


def _fetcher(services: Services, soulstone: Soulstone) -> Fetch:
    session = services.upstreams.session(soulstone)
    url = services.upstreams.url(soulstone, "/metrics")

    async def fetch() -> str:
        async with session.get(url) as response:
            if response.status != 200:
                raise aiohttp.ClientResponseError(response.request_info, (),
                                                  status=response.status)  # fmt: skip
            return await response.text()

    return fetch


async def exposition(services: Services, accept: str) -> tuple[bytes, str]:
    """The gateway's metrics and its running engines', and their content type."""
    openmetrics = OPENMETRICS in accept
    running = services.scheduler.running
    targets = [(s.id, _fetcher(services, s)) for s in services.codex.soulstones
               if s.id in running and s.engine in SCRAPED_ENGINES]  # fmt: skip
    families, failed = await scrape(targets)
    metrics = services.metrics
    for soulstone in failed:
        metrics.scrape_failures.labels(soulstone).inc()
    own = metrics.render(openmetrics)
    if openmetrics:
        body = own.removesuffix(b"# EOF\n") + render_openmetrics(families).encode() + b"# EOF\n"
        return body, metrics.openmetrics_type
    return own + render_text(families).encode(), metrics.content_type


async def metrics_view(request: web.Request) -> web.Response:
    """GET /metrics on the observability listener: no identity asked."""
    services = request.app[GATEWAY]
    body, content_type = await exposition(services, request.headers.get("Accept", ""))
    return web.Response(body=body, headers={"Content-Type": content_type,
                                            **correlation(services, request)})  # fmt: skip


async def health_view(request: web.Request) -> web.Response:
    """GET /health on the observability listener."""
    return web.Response(body=b'{"status":"ok"}', content_type="application/json",
                        headers=correlation(request.app[GATEWAY], request))  # fmt: skip


async def nothing_else(request: web.Request) -> web.Response:
    """Every other path: 404, whatever the method (the API is not reachable here)."""
    refusal = Refusal(404, "NOT_FOUND", f"{request.path} is not served on the observability "
                      "listener: only /metrics and /health")  # fmt: skip
    return error_response(refusal, correlation(request.app[GATEWAY], request), False)


def make_metrics_app(services: Services) -> web.Application:
    """The observability listener's application: /metrics and /health only."""
    app = web.Application(client_max_size=1024)
    app[GATEWAY] = services
    app.router.add_get("/metrics", metrics_view)
    app.router.add_get("/health", health_view)
    app.router.add_route("*", "/{tail:.*}", nothing_else)
    return app


def _group_id(group: str) -> int:
    try:
        return int(group) if group.isdigit() else grp.getgrnam(group).gr_gid
    except KeyError:
        raise UsageError(f"--metrics-group {group}: no such group") from None


def _give(path: Path, gid: int, group: str) -> None:
    try:
        os.chown(path, -1, gid)
    except PermissionError:
        raise UsageError(f"--metrics-group {group}: not a group of this user") from None


def metrics_socket(path: Path, group: str | None) -> socket.socket:
    """The observability socket: 0660, owned by `group` when given (so Prometheus can read).

    A folder it has to create is 0750 and given to the group too, so the
    group can reach the socket in it.
    """
    gid = _group_id(group) if group is not None else None
    if gid is not None and group is not None and not path.parent.exists():
        path.parent.mkdir(mode=0o750, parents=True)
        path.parent.chmod(0o750)
        _give(path.parent, gid, group)
    prepare_socket(path, own_folder=False)
    sock = bind_unix(path)
    if gid is not None and group is not None:
        try:
            _give(path, gid, group)
        except UsageError:
            sock.close()
            path.unlink(missing_ok=True)
            raise
    return sock


def metrics_tcp_address(value: str, strict: bool) -> tuple[str, int]:
    """`--metrics-tcp HOST:PORT`, refused beyond loopback and under strict mode."""
    if strict:
        raise UsageError("strict mode refuses TCP: use --metrics-socket for the metrics listener")
    host, port = parse_tcp(value)
    if not is_loopback(host):
        raise UsageError(f"--metrics-tcp {value}: {host} is not a loopback address "
                         "(the listener answers without identity)")  # fmt: skip
    return host, port
