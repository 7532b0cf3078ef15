"""The gateway's watch over remote soulstones (SPEC C12): probes and a circuit breaker.

One background task per remote probes it (`/health`, else `/v1/models`)
every `health.interval` while it answers. A failed probe, or a request
whose connection to it failed (`failed`), opens the breaker: the remote
leaves the routed set, requests for it are refused at once with 503
ENGINE_UNAVAILABLE and a Retry-After (`check`), and it is probed again
after a backoff that doubles up to `backoff_max`. When it answers again it
is routed to again, with no restart of anything. A remote with
`models = "discover"` has its model list read on each probe (`on_models`).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from soulstone.codex.models import Codex, Soulstone
from soulstone.errors import SoulstoneError
from soulstone.runtimes.remote import Probe, RemoteRuntime, probe_remote
from soulstone.runtimes.upstream import Upstreams
from soulstone.supervisor.restarts import Unavailable
from soulstone.supervisor.schedule import Scheduler

BACKOFF_S = 0.5
BACKOFF_MAX_S = 10.0


@dataclass
class Breaker:
    """One remote's breaker: open (down) or closed, why, and when it is probed next."""

    up: bool | None = None  # None: not probed yet
    reason: str | None = None
    step: int = 0  # failures since it last answered
    retry_at: float = 0.0  # monotonic time of the next probe while down
    wake: asyncio.Event = field(default_factory=asyncio.Event)


class RemoteWatch:
    """Probes each remote soulstone; keeps the scheduler's routed set true to what answers."""

    def __init__(
        self,
        scheduler: Scheduler,
        upstreams: Upstreams,
        runtime: RemoteRuntime,
        on_models: Callable[[Soulstone, tuple[str, ...]], None] | None = None,
        on_state: Callable[[Soulstone, bool, str | None], None] | None = None,
        backoff: float = BACKOFF_S,
        backoff_max: float = BACKOFF_MAX_S,
    ) -> None:
        self.scheduler = scheduler
        self.upstreams = upstreams
        self.runtime = runtime
        self.on_models = on_models or (lambda _s, _m: None)
        self.on_state = on_state or (lambda _s, _up, _why: None)
        self.backoff, self.backoff_max = backoff, backoff_max
        self.breakers: dict[str, Breaker] = {}
        self._watched: dict[str, Soulstone] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}

    def use(self, codex: Codex) -> None:
        """Watch this codex's remotes (a changed declaration is watched anew)."""
        remotes = {s.id: s for s in codex.soulstones if s.remote is not None}
        for sid in list(self._watched):
            if remotes.get(sid) != self._watched[sid]:
                self._tasks.pop(sid).cancel()
                del self._watched[sid]
                self.breakers.pop(sid, None)
        for sid, soulstone in remotes.items():
            if sid not in self._watched:
                self._watched[sid] = soulstone
                self.breakers[sid] = Breaker()
                self._tasks[sid] = asyncio.create_task(self._watch(soulstone))

    def check(self, soulstone: Soulstone) -> None:
        """Refuse at once (503 ENGINE_UNAVAILABLE, Retry-After) a remote whose breaker is open."""
        breaker = self.breakers.get(soulstone.id)
        if breaker is None or breaker.up is not False:
            return
        wait = max(1, math.ceil(breaker.retry_at - time.monotonic()))
        raise Unavailable(f"{soulstone.id}: the remote does not answer ({breaker.reason}); "
                          f"it is probed again in {wait} s", retry_after=wait)  # fmt: skip

    def failed(self, soulstone: Soulstone, reason: str) -> None:
        """A request's connection to the remote failed: open its breaker now."""
        breaker = self.breakers.get(soulstone.id)
        if breaker is not None and breaker.up is not False:
            self._down(soulstone, breaker, reason)
            breaker.wake.set()

    def _down(self, soulstone: Soulstone, breaker: Breaker, reason: str | None) -> None:
        was = breaker.up
        breaker.up, breaker.reason = False, reason
        breaker.step += 1
        delay = min(self.backoff_max, self.backoff * 2.0 ** min(breaker.step - 1, 30))
        breaker.retry_at = time.monotonic() + delay
        self.scheduler.remote_routed(soulstone, False)
        if was is not False:
            self.on_state(soulstone, False, reason)

    def _up(self, soulstone: Soulstone, breaker: Breaker, probe: Probe) -> None:
        was = breaker.up
        breaker.up, breaker.reason, breaker.step = True, None, 0
        self.scheduler.remote_routed(soulstone, soulstone.id not in self.runtime.parked)
        if probe.models is not None and soulstone.discover:
            self.on_models(soulstone, probe.models)
        if was is not True:
            self.on_state(soulstone, True, probe.path)

    async def _probe(self, soulstone: Soulstone) -> Probe:
        try:
            session = self.upstreams.session(soulstone)
        except SoulstoneError as error:  # its key cannot be read
            return Probe(False, time.time(), reason=str(error))
        return await probe_remote(session, soulstone)

    async def _watch(self, soulstone: Soulstone) -> None:
        breaker = self.breakers[soulstone.id]
        delay = 0.0
        while True:
            if delay > 0:
                breaker.wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(breaker.wake.wait(), delay)
                    delay = self._delay(soulstone, breaker)  # woken: a request failed
                    continue
            probe = await self._probe(soulstone)
            self.runtime.record(soulstone, probe)
            if probe.healthy:
                self._up(soulstone, breaker, probe)
            else:
                self._down(soulstone, breaker, probe.reason)
            delay = self._delay(soulstone, breaker)

    def _delay(self, soulstone: Soulstone, breaker: Breaker) -> float:
        if breaker.up is False:
            return max(0.01, breaker.retry_at - time.monotonic())
        return soulstone.health.interval

    async def close(self) -> None:
        """Stop every probe."""
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks.clear()
        self._watched.clear()
