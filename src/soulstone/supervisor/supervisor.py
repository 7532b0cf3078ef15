"""The supervisor: the one place that starts and stops engines, one manifestation at a time."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Literal

from soulstone.artifacts.preflight import Preflight
from soulstone.codex.models import Codex, Soulstone, Warmup
from soulstone.errors import ModelError, SoulstoneError
from soulstone.runtimes.base import EngineStatus, Health, Runtime, StartError
from soulstone.runtimes.health import poll_gap, probe
from soulstone.runtimes.sleep import SleepError, put_to_sleep, wake_up
from soulstone.runtimes.state import StateFolder
from soulstone.runtimes.warmup import WarmupError, warm_up
from soulstone.supervisor.plan import Plan, Target, make_plan, resolve
from soulstone.supervisor.sleeping import SleepMarks

EventKind = Literal[
    "stopping",
    "stopped",
    "starting",
    "waiting",
    "healthy",
    "warmed",
    "warmup_failed",
    "failed",
    "sleeping",
    "asleep",
    "sleep_failed",
    "waking",
    "awake",
    "wake_failed",
]
Prober = Callable[[Soulstone], Awaitable[Health]]
Prepare = Callable[[Soulstone], Soulstone]
Warmer = Callable[[Soulstone, Warmup, float], Awaitable[str]]
Sleeper = Callable[[Soulstone, float], Awaitable[None]]


@dataclass(frozen=True)
class Event:
    """Progress of a manifestation, for the CLI's display and the gateway's logs.

    `warmed` (detail: the path that answered) and `warmup_failed` (detail:
    why) come after `healthy` for a soulstone with `warmup`; their
    `elapsed` is the warm-up request's time. A `sleep = true` soulstone that
    must give way goes `sleeping` (detail: why) then `asleep`, or
    `sleep_failed` (detail: why) then `stopping`; one woken for a request
    goes `waking` then `awake`, or `wake_failed` then `stopping`, `starting`.
    """

    kind: EventKind
    soulstone: str
    detail: str = ""
    elapsed: float = 0.0
    timeout: float = 0.0


@dataclass(frozen=True)
class Failure:
    """A soulstone that did not become healthy: why, and the end of its log."""

    soulstone: str
    reason: str
    log_tail: str


class ManifestError(SoulstoneError):
    """A manifestation failed; what it started has been stopped again."""

    def __init__(self, failures: list[Failure]) -> None:
        self.failures = failures
        lines = []
        for failure in failures:
            lines.append(f"{failure.soulstone}: {failure.reason}")
            if failure.log_tail:
                lines += ["  " + line for line in failure.log_tail.splitlines()]
        super().__init__("\n".join(lines))


class Supervisor:
    """Starts, stops and inspects the codex's soulstones through their runtimes.

    Manifestations are serialised: within a process by an asyncio lock, and
    across processes (CLI and gateway) by a lock file in the state folder.
    Before a start, `preflight` checks each soulstone's model (SPEC C10) and
    gives the runtime the soulstone as it must start (default: `Preflight`
    on the Hugging Face cache of this process's environment, not strict).
    A soulstone with `warmup` that this manifestation started gets its
    warm-up request (`warmer`) once healthy, before the manifestation returns.
    A soulstone with `sleep = true` (vLLM) is put to sleep (`sleeper`)
    instead of stopped when it must give way, and woken (`waker`) instead of
    started; a sleeping engine runs on but holds no GPU, so it conflicts
    with nothing. When either call fails, it is stopped (and started) instead.

    Once an engine passes its health check, the requests waiting for it go
    on at once; the runtime's note of it (`mark_healthy`: a record, and for
    the process runtime a new spare keeper) is written meanwhile. Every
    later look through this supervisor (a status, a manifestation, a stop)
    waits for those notes first, and `manifest` returns only once they are
    written; a note that cannot be written leaves the engine `starting` in
    `status`, while it serves.
    """

    def __init__(
        self,
        codex: Codex,
        state: StateFolder,
        runtimes: Mapping[str, Runtime],
        on_event: Callable[[Event], None] | None = None,
        prober: Prober = probe,
        preflight: Prepare | None = None,
        warmer: Warmer = warm_up,
        sleeper: Sleeper = put_to_sleep,
        waker: Sleeper = wake_up,
    ) -> None:
        self.codex = codex
        self.state = state
        self.runtimes = runtimes
        self.on_event = on_event or (lambda _event: None)
        self.prober = prober
        self.preflight = preflight or Preflight.from_env()
        self.warmer = warmer
        self.sleeper = sleeper
        self.waker = waker
        self.sleeping = SleepMarks(state)
        self._lock = asyncio.Lock()
        self._marking: set[asyncio.Task[None]] = set()

    def runtime(self, soulstone: Soulstone) -> Runtime:
        """The runtime that runs this soulstone."""
        return self.runtimes[soulstone.runtime]

    @contextlib.asynccontextmanager
    async def exclusive(self) -> AsyncIterator[None]:
        """Hold the supervisor's locks (this process's and the state folder's)."""
        async with self._lock:
            await self.settled()
            self.state.ensure()
            fd = os.open(self.state.lock, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                await asyncio.to_thread(fcntl.flock, fd, fcntl.LOCK_EX)
                yield
            finally:
                os.close(fd)

    async def status(self, soulstone: Soulstone, check_health: bool = True) -> EngineStatus:
        """One soulstone's state; with check_health, also container details and a health probe.

        An engine this supervisor put to sleep is `sleeping` (and not probed).
        """
        await self.settled()
        runtime = self.runtime(soulstone)
        found = self.sleeping.apply(await asyncio.to_thread(runtime.status, soulstone))
        if check_health:
            found = await asyncio.to_thread(runtime.details, found)
        if check_health and found.active:
            found = found.with_health(await self.prober(soulstone))
        return found

    async def statuses(self, check_health: bool = True) -> list[EngineStatus]:
        """Every soulstone's state, sorted by id."""
        return list(
            await asyncio.gather(*(self.status(s, check_health) for s in self.codex.soulstones))
        )

    async def _running(self, sleeping: bool = False) -> list[Soulstone]:
        """The soulstones that run or start (with `sleeping`, those asleep too)."""
        found = await self.statuses(check_health=False)
        return [s for s, st in zip(self.codex.soulstones, found, strict=True)
                if st.active or (sleeping and st.alive)]  # fmt: skip

    async def plan(self, target: Target) -> Plan:
        """What manifesting this target would stop and start, and why."""
        running = await self._running()
        targets = resolve(self.codex, target, {s.id for s in running})
        return make_plan(targets, running)

    async def manifest(self, target: Target) -> Plan:
        """Stop what conflicts, start the target set, wait until each is healthy.

        A call for what already runs is a no-op. When a soulstone fails to
        become healthy, everything this call started is stopped again and
        ManifestError reports why, with the end of each failed engine's log.
        A soulstone started here with `warmup` has had its warm-up request
        (answered or failed: a failed warm-up does not fail the start).
        """
        async with self.exclusive():
            plan = await self._manifest(await self.plan(target))
            await self.settled()
            return plan

    async def manifest_soulstones(self, targets: tuple[Soulstone, ...]) -> Plan:
        """Manifest exactly these (mutually compatible) soulstones; see `manifest`."""
        async with self.exclusive():
            return await self._manifest(make_plan(targets, await self._running()))

    async def _prepare(self, soulstones: tuple[Soulstone, ...]) -> list[Soulstone]:
        """The soulstones as they must start; ManifestError when a model check fails."""
        prepared: list[Soulstone] = []
        failures: list[Failure] = []
        for soulstone in soulstones:
            try:
                prepared.append(await asyncio.to_thread(self.preflight, soulstone))
            except ModelError as error:
                failures.append(Failure(soulstone.id, str(error), ""))
        if failures:
            for failure in failures:
                self.on_event(Event("failed", failure.soulstone, failure.reason))
            raise ManifestError(failures)
        return prepared

    async def _manifest(self, plan: Plan) -> Plan:
        prepared = await self._prepare(plan.start)  # before anything stops for it
        for stop in plan.stop:
            if not stop.soulstone.sleep or not await self._sleep(stop.soulstone, stop.reason):
                await self._stop(stop.soulstone, stop.reason)
        started: list[Soulstone] = []
        failures: list[Failure] = []
        for soulstone in prepared:
            if await self._wake(soulstone):
                started.append(soulstone)  # woken, not launched: its warm-up is sent again
                continue
            self.on_event(Event("starting", soulstone.id, soulstone.uri,
                                timeout=soulstone.health.start_timeout))  # fmt: skip
            try:
                await asyncio.to_thread(self.runtime(soulstone).start, soulstone)
            except StartError as error:
                failures.append(Failure(soulstone.id, str(error), ""))
                break
            started.append(soulstone)
        if not failures:
            fresh = {s.id for s in started}
            results = await asyncio.gather(
                *(self._await_healthy(s, s.id in fresh) for s in plan.targets)
            )
            failures = [f for f in results if f is not None]
        if failures:
            for failure in failures:
                self.on_event(Event("failed", failure.soulstone, failure.reason))
            for soulstone in started:
                await self._stop(soulstone, "its manifestation failed")
            raise ManifestError(failures)
        return plan

    async def down(self, target: Target | None = None, reason: str = "asked to stop") -> list[str]:
        """Stop the target's soulstones (all running ones when None); return their ids."""
        async with self.exclusive():
            running = await self._running(sleeping=True)
            if target is not None:
                wanted = {s.id for s in resolve(self.codex, target, {r.id for r in running})}
                running = [s for s in running if s.id in wanted]
            return await self._stop_all(running, reason)

    async def stop_soulstones(self, ids: set[str], reason: str) -> list[str]:
        """Stop these soulstones where they run; return the ids stopped."""
        async with self.exclusive():
            alive = await self._running(sleeping=True)
            return await self._stop_all([s for s in alive if s.id in ids], reason)

    async def _stop_all(self, soulstones: list[Soulstone], reason: str) -> list[str]:
        for soulstone in soulstones:
            await self._stop(soulstone, reason)
        return [s.id for s in soulstones]

    async def _stop(self, soulstone: Soulstone, reason: str) -> None:
        self.on_event(Event("stopping", soulstone.id, reason))
        began = time.monotonic()
        await asyncio.to_thread(self.runtime(soulstone).stop, soulstone)
        self.sleeping.clear(soulstone.id)
        self.on_event(Event("stopped", soulstone.id, elapsed=time.monotonic() - began))

    async def _sleep(self, soulstone: Soulstone, reason: str) -> bool:
        """Put a running engine to sleep instead of stopping it; False when it would not."""
        self.on_event(Event("sleeping", soulstone.id, reason))
        began = time.monotonic()
        found = await asyncio.to_thread(self.runtime(soulstone).status, soulstone)
        try:
            await self.sleeper(soulstone, soulstone.health.start_timeout)
        except SleepError as error:
            self.on_event(Event("sleep_failed", soulstone.id, str(error),
                                elapsed=time.monotonic() - began))  # fmt: skip
            return False
        self.sleeping.put(found)
        self.on_event(Event("asleep", soulstone.id, elapsed=time.monotonic() - began))
        return True

    async def _wake(self, soulstone: Soulstone) -> bool:
        """Wake an engine that sleeps; False when none sleeps (a failed wake-up stops it)."""
        runtime = self.runtime(soulstone)
        found = self.sleeping.apply(await asyncio.to_thread(runtime.status, soulstone))
        if found.state != "sleeping":
            self.sleeping.clear(soulstone.id)
            return False
        self.on_event(Event("waking", soulstone.id, soulstone.uri))
        began = time.monotonic()
        try:
            await self.waker(soulstone, soulstone.health.start_timeout)
        except SleepError as error:
            self.on_event(Event("wake_failed", soulstone.id, str(error),
                                elapsed=time.monotonic() - began))  # fmt: skip
            await self._stop(soulstone, "it did not wake up")
            return False
        self.sleeping.clear(soulstone.id)
        self.on_event(Event("awake", soulstone.id, elapsed=time.monotonic() - began))
        return True

    def _mark_healthy(self, soulstone: Soulstone) -> None:
        """Have the runtime note that the engine passed its health check, in the background."""
        mark = self.runtime(soulstone).mark_healthy
        task = asyncio.create_task(asyncio.to_thread(mark, soulstone))
        self._marking.add(task)
        task.add_done_callback(self._marked)

    def _marked(self, task: asyncio.Task[None]) -> None:
        self._marking.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved: a note not written leaves the engine `starting`

    async def settled(self) -> None:
        """Wait until the notes of engines that just passed their health check are written."""
        while self._marking:
            await asyncio.wait(set(self._marking))

    async def _warm_up(self, soulstone: Soulstone, warmup: Warmup) -> None:
        """Send the warm-up request; its outcome is an event, never a failure of the start."""
        began = time.monotonic()
        try:
            path = await self.warmer(soulstone, warmup, soulstone.health.start_timeout)
        except WarmupError as error:
            self.on_event(Event("warmup_failed", soulstone.id, str(error),
                                elapsed=time.monotonic() - began))  # fmt: skip
            return
        self.on_event(Event("warmed", soulstone.id, path, elapsed=time.monotonic() - began))

    async def _await_healthy(self, soulstone: Soulstone, warm: bool = False) -> Failure | None:
        runtime = self.runtime(soulstone)
        timeout = soulstone.health.start_timeout
        began = time.monotonic()
        shown = -soulstone.health.interval  # when a `waiting` event last went out
        while True:
            # The engine's state and a probe at once: one is not worth waiting for the other.
            status, health = await asyncio.gather(
                asyncio.to_thread(runtime.status, soulstone), self.prober(soulstone)
            )
            elapsed = time.monotonic() - began
            if not status.active:
                tail = await asyncio.to_thread(runtime.log_tail, soulstone)
                status = await asyncio.to_thread(runtime.status, soulstone)  # its exit code now
                code = f" (exit {status.exit_code})" if status.exit_code is not None else ""
                return Failure(soulstone.id, f"exited before it was healthy{code}", tail)
            if health == "healthy":
                self._mark_healthy(soulstone)
                self.on_event(Event("healthy", soulstone.id, elapsed=elapsed, timeout=timeout))
                if warm and soulstone.warmup is not None:
                    await self._warm_up(soulstone, soulstone.warmup)
                return None
            if elapsed >= timeout:
                tail = await asyncio.to_thread(runtime.log_tail, soulstone)
                return Failure(
                    soulstone.id, f"not healthy after {timeout:g} s ({soulstone.health.path})", tail
                )
            if (
                elapsed - shown >= soulstone.health.interval
            ):  # one per interval, however often probed
                shown = elapsed
                self.on_event(Event("waiting", soulstone.id, elapsed=elapsed, timeout=timeout))
            gap = poll_gap(elapsed, soulstone.health.interval)
            await asyncio.sleep(min(gap, max(0.01, timeout - elapsed)))
