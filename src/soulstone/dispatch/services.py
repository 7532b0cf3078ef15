"""What the request path needs, owned by one gateway process (no transport in here)."""

from __future__ import annotations

import asyncio
import itertools
import os
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from soulstone.codex.models import Codex, Soulstone
from soulstone.guard.guard import Guard
from soulstone.lora.capture import CaptureLog
from soulstone.lora.hot import HotAdapters
from soulstone.lora.prefetch import Transitions
from soulstone.lora.registry import AdapterRecord
from soulstone.observe.live import LiveHub
from soulstone.observe.logging import RequestLog
from soulstone.observe.metrics import Metrics
from soulstone.runtimes.upstream import Upstreams
from soulstone.supervisor.remotes import RemoteWatch
from soulstone.supervisor.schedule import Scheduler
from soulstone.tools.calls import Validators
from soulstone.tools.heartbeat import Heartbeats
from soulstone.tools.policy import Policy, default_policy

BIG_PARSES = 2  # large bodies parsed at once, off the event loop


@dataclass
class Services:
    """Everything the request path needs, owned by one gateway process."""

    scheduler: Scheduler
    upstreams: Upstreams
    metrics: Metrics
    reload: Callable[[], Awaitable[dict[str, Any]]]
    guard: Guard
    requests_log: RequestLog = field(default_factory=RequestLog)
    hot: HotAdapters | None = None
    adapters: dict[str, AdapterRecord] = field(default_factory=dict)
    transitions: Transitions = field(default_factory=Transitions)
    policy: Policy = field(default_factory=default_policy)
    validators: Validators = field(default_factory=lambda: Validators(default_policy()))
    heartbeats: Heartbeats = field(default_factory=lambda: Heartbeats(time.monotonic))
    strict: bool = False
    background: set[asyncio.Task[None]] = field(default_factory=set)
    routes: dict[str, Soulstone] = field(default_factory=dict)
    big_parses: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(BIG_PARSES))
    live: LiveHub = field(default_factory=LiveHub)  # what the dashboard shows as it happens
    last_reload: dict[str, Any] | None = None  # how the last reload went (admin status shows it)
    capture_to: Path | None = None  # the capture folder; None: nothing is ever captured
    capture: CaptureLog | None = field(init=False, default=None)  # opted-in clients' chats
    remotes: RemoteWatch | None = None  # probes and breakers of remote soulstones (SPEC C12)
    discovered: dict[str, tuple[str, ...]] = field(default_factory=dict)  # remote id -> models
    _id_prefix: str = field(default_factory=lambda: os.urandom(6).hex())
    _ids: Iterator[int] = field(default_factory=itertools.count)

    def __post_init__(self) -> None:
        self.use(self.scheduler.codex)
        if self.capture_to is not None:
            self.capture = CaptureLog(self.capture_to)

    def use_policy(self, policy: Policy) -> None:
        """Check tools against this policy from now on."""
        self.policy, self.validators = policy, Validators(policy)

    @property
    def codex(self) -> Codex:
        """The codex in force."""
        return self.scheduler.codex

    async def refresh_adapters(self) -> None:
        """Re-read the registry's adapters (after an add or a removal), in its owner thread."""
        if self.hot is not None:
            self.adapters = {r.name: r for r in await self.hot.registry.records()}

    def adapter_state(self, record: AdapterRecord) -> str:
        """cold (only in the database), warm (on disk) or hot (loaded in its engine)."""
        if self.hot is None:
            return "cold"
        if record.name in self.hot.hot(record.base):
            return "hot"
        return "warm" if self.hot.cache.is_warm(record) else "cold"

    def use(self, codex: Codex) -> None:
        """Route by this codex from now on."""
        self.scheduler.supervisor.codex = codex
        self.routes = {model: s for s in codex.soulstones for model in s.models}
        self.discovered = {sid: models for sid, models in self.discovered.items()
                           if (s := codex.get(sid)) is not None and s.discover}  # fmt: skip
        for sid, models in self.discovered.items():
            if (found := codex.get(sid)) is not None:
                self._route_discovered(found, models)
        self.upstreams.forget()
        if self.remotes is not None:
            self.remotes.use(codex)

    def served(self, soulstone: Soulstone) -> tuple[str, ...]:
        """The model names a soulstone serves (a discovering remote's: as last read)."""
        return self.discovered.get(soulstone.id, ()) if soulstone.discover else soulstone.models

    def engine_state(self, soulstone: Soulstone) -> str:
        """running, failed (marked), unreachable (a remote whose breaker is open) or stopped."""
        sid = soulstone.id
        if sid in self.scheduler.running:
            return "running"
        if self.remotes is not None and soulstone.remote is not None:
            breaker = self.remotes.breakers.get(sid)
            if breaker is not None and breaker.up is False:
                return "unreachable"
        failures = self.scheduler.recovery.failures.get(sid)
        if failures is not None and failures.marked(self.scheduler.clock()) is not None:
            return "failed"
        return "stopped"

    def discover(self, soulstone: Soulstone, models: tuple[str, ...]) -> None:
        """A remote's model list as it was just read: route its names here."""
        if self.discovered.get(soulstone.id) == models:
            return
        for model in self.discovered.get(soulstone.id, ()):
            if self.routes.get(model) is soulstone:
                del self.routes[model]
        self.discovered[soulstone.id] = models
        self._route_discovered(soulstone, models)

    def _route_discovered(self, soulstone: Soulstone, models: tuple[str, ...]) -> None:
        """Route a remote's discovered names that no other soulstone serves."""
        for model in models:
            self.routes.setdefault(model, soulstone)

    def new_request_id(self, counted: bool = True) -> str:
        """A fresh request id (counted, unless told otherwise: the caller sent none)."""
        if counted:
            self.metrics.generated_ids.inc()
        return f"{self._id_prefix}{next(self._ids):08x}"

    def engine_failed(self, soulstone: Soulstone) -> None:
        """Note an engine that stopped answering: it is restarted (after a backoff) if it died.

        A remote is not restarted: its breaker opens (refused at once, probed again).
        """
        if soulstone.remote is not None and self.remotes is not None:
            self.remotes.failed(soulstone, "a request's connection to it failed")
        else:
            self.scheduler.died(soulstone, "a request's connection to it broke")
        self.metrics.engine_failures.labels(soulstone.id).inc()
        self.live.engine(soulstone.id, "failed", "stopped answering mid-request")
