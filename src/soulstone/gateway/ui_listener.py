"""The dashboard's loopback listener, opened on demand, and the door `soulstone ui` knocks on.

Never on by default: the first `POST /ui/open` (on the gateway's Unix socket,
by any client it knows) starts a TCP listener on 127.0.0.1 only, and every
call mints a one-time token for the caller's client. A strict gateway refuses
unless the caller is an admin client that passes `allow_strict` (the gateway
then records it in its state file, where `soulstone audit` finds it).
"""

from __future__ import annotations

import asyncio
import socket
import time
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web

from soulstone.dispatch.call import wants_flat_errors
from soulstone.dispatch.path import RequestPath
from soulstone.errors import Refusal
from soulstone.gateway.connections import peer_of_request
from soulstone.gateway.dashboard import make_dashboard_app
from soulstone.gateway.errors import error_response
from soulstone.gateway.routes import caller, read_json_object
from soulstone.gateway.state import GATEWAY, correlation
from soulstone.gateway.ui_access import Access
from soulstone.guard.clients import Client
from soulstone.runtimes.state import read_json, write_json

LOOPBACK = "127.0.0.1"
SHUTDOWN_S = 2.0  # live feeds and log follows are cut after this at shutdown


class Dashboard:
    """The dashboard of one gateway: its listener (once opened) and who may enter."""

    def __init__(self, path: RequestPath, state_file: Path, strict: bool, log: Any) -> None:
        self.path = path
        self.state_file = state_file
        self.strict = strict
        self.log = log
        self.access = Access(time.monotonic)
        self.port: int | None = None
        self.strict_override = False
        self._runner: web.AppRunner | None = None
        self._lock = asyncio.Lock()

    async def open(self, client: Client, port: int | None, allow_strict: bool) -> dict[str, Any]:
        """Start the listener (when not yet on) and mint a token for this client."""
        if self.strict and not allow_strict:
            raise Refusal(403, "STRICT_MODE", "this gateway runs in strict mode (no TCP): pass "
                          "--allow-strict to open the dashboard on loopback anyway")  # fmt: skip
        if self.strict and not client.admin:
            raise Refusal(403, "ADMIN_ONLY", "only an admin client may open the dashboard of a "
                          "strict gateway")  # fmt: skip
        async with self._lock:
            if self._runner is None:
                await self._start(port or 0)
                self.strict_override = self.strict
                self._record()
            elif port and port != self.port:
                raise Refusal(409, "DASHBOARD_OPEN", f"the dashboard already listens on port "
                              f"{self.port}: run `soulstone ui` without --port")  # fmt: skip
        token = self.access.mint(client)
        self.log.info("dashboard token minted", client=client.name, admin=client.admin,
                      port=self.port)  # fmt: skip
        return {"url": f"http://{LOOPBACK}:{self.port}/?token={token}", "port": self.port,
                "client": client.name, "admin": client.admin}  # fmt: skip

    async def _start(self, port: int) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((LOOPBACK, port))
            sock.listen(128)
            sock.setblocking(False)
        except OSError as error:
            sock.close()
            raise Refusal(409, "DASHBOARD_PORT", f"cannot listen on {LOOPBACK}:{port}: "
                          f"{error.strerror or error}") from None  # fmt: skip
        self.port = int(sock.getsockname()[1])
        runner = web.AppRunner(make_dashboard_app(self), access_log=None,
                               handler_cancellation=True, shutdown_timeout=SHUTDOWN_S)  # fmt: skip
        await runner.setup()
        try:
            await web.SockSite(runner, sock).start()
        except BaseException:
            sock.close()
            await runner.cleanup()
            raise
        self._runner = runner
        self.log.info("dashboard listening", on=f"tcp:{LOOPBACK}:{self.port}",
                      strict_override=self.strict or None)  # fmt: skip

    def _record(self) -> None:
        """Note the dashboard in the gateway's state file (what `soulstone audit` reads)."""
        document = read_json(self.state_file)
        if document is not None:
            document["dashboard"] = f"tcp:{LOOPBACK}:{self.port}"
            document["dashboard_strict_override"] = self.strict_override
            write_json(self.state_file, document)

    async def close(self) -> None:
        """Stop the listener (live feeds end), forget every token and session."""
        self.access.end_all()
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()


DASHBOARD = web.AppKey("dashboard", Dashboard)


async def open_dashboard(request: web.Request) -> web.Response:
    """POST /ui/open `{"port": N|null, "allow_strict": bool}`: the URL with a one-time token."""
    gateway = request.config_dict[GATEWAY]
    client = None
    try:
        if peer_of_request(request) is None:
            raise Refusal(403, "UNIX_SOCKET_ONLY", "the dashboard is opened through the "
                          "gateway's Unix socket (`soulstone ui` on this machine)")  # fmt: skip
        client = await caller(gateway, request)
        body = await read_json_object(request)
        port = body.get("port")
        if port is not None and (isinstance(port, bool) or not isinstance(port, int)
                                 or not 0 < port < 65536):  # fmt: skip
            raise Refusal(400, "BAD_REQUEST", "`port` must be a TCP port number (1-65535)",
                          param="port")  # fmt: skip
        answer = await request.app[DASHBOARD].open(client, port, body.get("allow_strict") is True)
    except Refusal as refusal:
        gateway.metrics.refused(refusal.code)
        flat = wants_flat_errors(request.headers, client)
        return error_response(refusal, correlation(gateway, request), flat)
    return web.Response(body=orjson.dumps(answer), content_type="application/json",
                        headers=correlation(gateway, request))  # fmt: skip


async def elsewhere(request: web.Request) -> web.Response:
    """Any other path or method under /ui/: refused in the error table's shape."""
    gateway = request.config_dict[GATEWAY]
    if request.path == "/ui/open":
        refusal = Refusal(405, "METHOD_NOT_ALLOWED", f"{request.method} /ui/open is not allowed")
    else:
        refusal = Refusal(404, "NOT_FOUND", f"no such endpoint: {request.path}")
    gateway.metrics.refused(refusal.code)
    return error_response(refusal, correlation(gateway, request))


def make_ui_door(dashboard: Dashboard) -> web.Application:
    """The sub-application mounted at /ui/ on the API: `POST /ui/open` only."""
    door = web.Application(client_max_size=4096)
    door[DASHBOARD] = dashboard
    door.router.add_post("/open", open_dashboard)
    door.router.add_route("*", "/{tail:.*}", elsewhere)
    return door
