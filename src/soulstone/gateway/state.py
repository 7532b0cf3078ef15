"""The gateway's state: what the request path needs, owned by one gateway process."""

from __future__ import annotations

import itertools
import os
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from soulstone.codex.models import Codex, Soulstone
from soulstone.gateway.errors import REQUEST_ID, SESSION_ID
from soulstone.guard.guard import Guard
from soulstone.observe.logging import RequestLog
from soulstone.observe.metrics import Metrics
from soulstone.runtimes.upstream import Upstreams
from soulstone.supervisor.schedule import Scheduler


@dataclass
class Gateway:
    """Everything the request path needs, owned by one gateway process."""

    scheduler: Scheduler
    upstreams: Upstreams
    metrics: Metrics
    reload: Callable[[], Awaitable[dict[str, Any]]]
    guard: Guard
    requests_log: RequestLog = field(default_factory=RequestLog)
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
