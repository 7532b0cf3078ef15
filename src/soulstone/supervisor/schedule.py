"""Serve group by group: admit requests to running engines, swap in waves, never thrash.

The scheduler owns the gateway's view of which soulstones may take requests
(`running`) and how many requests each has in flight. A request for a
soulstone that runs is admitted at once. A request for one that does not
joins a *wave*: the first pending wave whose soulstones it can run beside,
else a new one at the back of the queue. Waves are served in order:

1. While the running soulstones a wave would evict still have requests in
   flight, new requests for them keep flowing, up to the wave's fairness
   deadline (`max_wait` after the wave formed).
2. Then the swap begins: requests for the evicted soulstones queue for a
   later wave, and those in flight get `drain_timeout` to finish.
3. The supervisor manifests the wave's soulstones (stopping what conflicts,
   and sending each started soulstone's warm-up request, if it has one),
   and every request of the wave is admitted together.

So interleaved requests for two conflicting models cost one swap per wave,
not one per request. The decisions (which wave, what it evicts, what next)
are pure functions in `supervisor/queue.py`; this module only acts on them.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Protocol

from soulstone.codex.models import Codex, Soulstone
from soulstone.errors import SoulstoneError
from soulstone.runtimes.oom import says_out_of_memory
from soulstone.supervisor.queue import Drain, Execute, Flow, Rest, WaveState, next_step, pick_wave
from soulstone.supervisor.recovery import Note, Recovery, Ticket
from soulstone.supervisor.restarts import RestartPolicy
from soulstone.supervisor.restarts import Unavailable as Unavailable  # where it used to live
from soulstone.supervisor.supervisor import ManifestError, Supervisor


@dataclass(frozen=True)
class Swap:
    """One executed wave: the soulstones it stopped and started, and how long it took."""

    stopped: tuple[str, ...]
    started: tuple[str, ...]
    seconds: float


@dataclass(eq=False)
class Wave:
    """Soulstones to manifest together, and the requests waiting for them."""

    targets: dict[str, Soulstone]
    deadline: float
    tickets: list[Ticket] = field(default_factory=list)
    drain_deadline: float | None = None
    executing: bool = False

    def state(self) -> WaveState:
        """This wave as the pure decisions of `queue` see it."""
        return WaveState(
            tuple(self.targets.values()), self.deadline, self.drain_deadline, self.executing
        )


class RemoteGate(Protocol):
    """The breaker of remote soulstones (SPEC C12): refuses one that does not answer."""

    def check(self, soulstone: Soulstone) -> None:
        """Raise a Refusal (503, Retry-After) when the remote is known to be down."""


class Scheduler:
    """Admits requests to engines and swaps engine groups in waves."""

    def __init__(
        self,
        supervisor: Supervisor,
        *,
        max_wait: float = 2.0,
        drain_timeout: float = 30.0,
        on_swap: Callable[[float], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        on_change: Callable[[set[str]], None] | None = None,
        on_wave: Callable[[Swap], None] | None = None,
        restarts: RestartPolicy | None = None,
        on_note: Callable[[Note], None] | None = None,
    ) -> None:
        self.supervisor = supervisor
        self.max_wait = max_wait
        self.drain_timeout = drain_timeout
        self.on_swap = on_swap or (lambda _seconds: None)
        self.on_change = on_change or (lambda _ids: None)
        self.on_wave = on_wave or (lambda _swap: None)  # every wave that stopped or started
        self.clock = clock
        self.running: set[str] = set()
        self.inflight: Counter[str] = Counter()
        self.last_used: dict[str, float] = {}
        self.started: set[str] = set()
        self.waves: list[Wave] = []
        self.swaps = 0
        self._closing: set[str] = set()
        self._changed = asyncio.Event()
        self._resumed = asyncio.Event()
        self._resumed.set()
        self._pump: asyncio.Task[None] | None = None
        self.remotes: RemoteGate | None = None  # the gateway's watch over remote soulstones
        # Deaths, restarts and failed marks (`on_note` hears of each).
        self.recovery = Recovery(supervisor, self._enqueue, self._exited, restarts, on_note, clock)

    @property
    def codex(self) -> Codex:
        """The codex in force (the supervisor's)."""
        return self.supervisor.codex

    def queued(self) -> int:
        """Requests waiting for a wave."""
        return sum(1 for w in self.waves for t in w.tickets if t.counts and not t.future.done())

    def in_flight(self) -> int:
        """Requests being served."""
        return sum(self.inflight.values())

    def waiting(self, soulstone_id: str) -> int:
        """Requests waiting for this soulstone (in a wave, or for its restart)."""
        queued = sum(1 for w in self.waves for t in w.tickets if t.soulstone == soulstone_id
                     and t.counts and not t.future.done())  # fmt: skip
        return queued + self.recovery.waiting(soulstone_id)

    async def sync(self) -> None:
        """Take the engines that already run and are healthy as running (and watch them)."""
        statuses = await self.supervisor.statuses()
        self.running = {s.id for s in statuses if s.state == "running"}
        now = self.clock()
        self.last_used = {soulstone_id: now for soulstone_id in self.running}
        for soulstone in self._running_soulstones():
            self.recovery.track(soulstone)

    def wait_limit(self, soulstone: Soulstone) -> float:
        """How long a request may wait for its engine (start, then warm-up) before 503."""
        warmup = soulstone.health.start_timeout if soulstone.warmup is not None else 0.0
        return self.max_wait + self.drain_timeout + soulstone.health.start_timeout + warmup + 10

    def admit_now(self, soulstone: Soulstone) -> bool:
        """Admit a request at once when its engine runs and no swap closes it (the fast path)."""
        if soulstone.id in self.running and soulstone.id not in self._closing:
            self.inflight[soulstone.id] += 1
            return True
        return False

    async def acquire(self, soulstone: Soulstone, counts: bool = True) -> None:
        """Admit a request for this soulstone, bringing it up first if needed.

        A soulstone marked failed is refused at once (EngineFailed); one whose
        restart waits for its backoff is waited for.
        """
        if soulstone.id in self.running and soulstone.id not in self._closing:
            if counts:
                self.inflight[soulstone.id] += 1
            return
        if soulstone.remote is not None and self.remotes is not None:
            self.remotes.check(soulstone)  # a remote that is down: refused at once
        self.recovery.check(soulstone)
        ticket = Ticket(soulstone.id, asyncio.get_running_loop().create_future(), counts)
        self._enqueue(ticket, soulstone)
        try:
            await asyncio.wait_for(ticket.future, self.wait_limit(soulstone))
        except TimeoutError:
            raise Unavailable(
                f"{soulstone.id} did not come up within {self.wait_limit(soulstone):g} s"
            ) from None

    def release(self, soulstone: Soulstone) -> None:
        """A request on this soulstone has finished."""
        self.inflight[soulstone.id] -= 1
        self.last_used[soulstone.id] = self.clock()
        self._changed.set()

    def remote_routed(self, soulstone: Soulstone, routed: bool) -> None:
        """A remote soulstone answers its probes (routed to) or does not (left out).

        A remote being swapped out (a conflicting group takes its place) is not
        routed to again by a probe: only a request for it swaps it back.
        """
        sid = soulstone.id
        if routed and sid not in self.running and sid not in self._closing:
            self.running.add(sid)
            self.last_used[sid] = self.clock()
            self.on_change({sid})
        elif not routed and sid in self.running:
            self.running.discard(sid)
            self.on_change({sid})

    def died(self, soulstone: Soulstone, reason: str) -> None:
        """The engine stopped answering or ended: requests wait for its restart (with backoff)."""
        sid = soulstone.id
        if sid not in self.running:
            return  # stopped on purpose, or its death is known already
        self.running.discard(sid)
        self.on_change({sid})
        if sid in self._closing:  # being swapped out: the swap stops it anyway
            self.recovery.watch.remove(sid)
            return
        self.recovery.died(soulstone, reason)

    def _exited(self, soulstone_id: str) -> None:
        """A watched engine's process ended."""
        soulstone = self.codex.get(soulstone_id)
        if soulstone is not None and soulstone_id in self.running:
            self.died(soulstone, "its process ended")
        elif soulstone_id not in self.recovery.held:
            self.recovery.watch.remove(soulstone_id)

    async def manifest(self, targets: tuple[Soulstone, ...]) -> None:
        """Bring these soulstones up through the wave queue (the admin API's `up`).

        Refused (EngineFailed) for a soulstone marked failed: `clear` it first.
        """
        for soulstone in targets:
            if soulstone.id in self.running and soulstone.id not in self._closing:
                continue
            self.recovery.check(soulstone)
            future = asyncio.get_running_loop().create_future()
            ticket = Ticket(soulstone.id, future, counts=False, retries=False)
            self._enqueue(ticket, soulstone)
            await ticket.future

    async def start_now(self, targets: tuple[Soulstone, ...]) -> None:
        """Manifest these at once, outside the wave queue (a reload, while `paused`).

        ManifestError (what it started stopped again) when one does not become healthy.
        """
        if not targets:
            return
        plan = await self.supervisor.manifest_soulstones(targets)
        ids = {s.id for s in targets}
        self.running |= ids
        self.started |= {s.id for s in plan.start}
        self.on_change(ids)
        now = self.clock()
        for soulstone in targets:
            self.last_used[soulstone.id] = now
            self.recovery.track(soulstone)

    async def stop(self, ids: set[str], reason: str) -> list[str]:
        """Stop these soulstones once their requests drain (bounded); new ones restart them."""
        self.running -= ids
        self.recovery.stopping(ids)
        deadline = self.clock() + self.drain_timeout
        while sum(self.inflight[i] for i in ids) and self.clock() < deadline:
            await self._wait_change(deadline)
        stopped = await self.supervisor.stop_soulstones(ids, reason)
        self.started -= set(stopped)
        self.on_change(set(stopped))
        return stopped

    async def stop_idle(self) -> list[str]:
        """Stop running soulstones idle for longer than their `ttl`."""
        now = self.clock()
        pending = {t for w in self.waves for t in w.targets}
        idle = {
            s.id
            for s in self.codex.soulstones
            if s.ttl is not None and s.id in self.running and s.id not in pending
            and not self.inflight[s.id] and now - self.last_used.get(s.id, now) >= s.ttl
        }  # fmt: skip
        return await self.stop(idle, "idle longer than its ttl") if idle else []

    async def close(self) -> None:
        """Stop the pump and recovery; fail whatever still waits."""
        if self._pump is not None:
            self._pump.cancel()
        self.recovery.close()
        for wave in self.waves:
            for ticket in wave.tickets:
                if not ticket.future.done():
                    ticket.future.set_exception(Unavailable("the gateway is shutting down"))
        self.waves.clear()

    def _wave_for(self, soulstone: Soulstone) -> Wave:
        index = pick_wave([w.state() for w in self.waves], soulstone)
        if index is not None:
            wave = self.waves[index]
            wave.targets.setdefault(soulstone.id, soulstone)
            return wave
        wave = Wave({soulstone.id: soulstone}, deadline=self.clock() + self.max_wait)
        self.waves.append(wave)
        return wave

    def _enqueue(self, ticket: Ticket, soulstone: Soulstone) -> None:
        """Hold the ticket while its soulstone awaits a restart, else put it in a wave."""
        if not self.recovery.hold(ticket):
            self._wave_for(soulstone).tickets.append(ticket)
            self._kick()

    def _kick(self) -> None:
        if self._pump is None or self._pump.done():
            self._pump = asyncio.create_task(self._run_waves())

    async def _wait_change(self, deadline: float) -> None:
        self._changed.clear()
        try:
            await asyncio.wait_for(self._changed.wait(), max(0.0, deadline - self.clock()))
        except TimeoutError:
            return

    def _running_soulstones(self) -> list[Soulstone]:
        return [s for s in self.codex.soulstones if s.id in self.running]

    @asynccontextmanager
    async def paused(self) -> AsyncIterator[None]:
        """Take no wave further meanwhile (one already swapping finishes first); requests queue."""
        self._resumed.clear()
        try:
            while any(w.executing for w in self.waves):
                await asyncio.sleep(0.05)
            yield
        finally:
            self._resumed.set()
            self._kick()

    def retarget(self, codex: Codex) -> None:
        """After a reload: point queued waves at the new declarations, failing removed ones."""
        for wave in list(self.waves):
            kept = {i: s for i in wave.targets if (s := codex.get(i)) is not None}
            for ticket in wave.tickets:
                if ticket.soulstone not in kept and not ticket.future.done():
                    ticket.future.set_exception(Unavailable(f"{ticket.soulstone} was removed"))
            wave.targets = kept
            if not kept:
                self.waves.remove(wave)
        self.running &= {s.id for s in codex.soulstones}
        self.recovery.retarget(codex)

    async def _run_waves(self) -> None:
        while True:
            await self._resumed.wait()
            states = [w.state() for w in self.waves]
            running = self._running_soulstones()
            step = next_step(states, running, self.inflight, self.clock(), self.drain_timeout)
            if isinstance(step, Rest):
                return
            wave = self.waves[0]
            if isinstance(step, Flow):  # the running group keeps flowing
                self._closing = set()
                await self._wait_change(step.until)
            elif isinstance(step, Drain):
                wave.drain_deadline = step.until
                self._closing = set(step.evict)
                await self._wait_change(step.until)
            elif isinstance(step, Execute):
                wave.executing = True
                self._closing = set(step.evict)
                await self._execute(wave, step.evict)
                if wave in self.waves:
                    self.waves.remove(wave)
                self._closing = set()

    async def _execute(self, wave: Wave, evict: frozenset[str]) -> None:
        began = self.clock()
        self.running -= evict
        self.recovery.stopping(evict)
        targets = tuple(wave.targets.values())
        try:
            plan = await self.supervisor.manifest_soulstones(targets)
        except ManifestError as error:
            self._start_failed(wave, error)
            return
        except SoulstoneError as error:
            failure = Unavailable(f"could not start {', '.join(wave.targets)}: {error}")
            for ticket in wave.tickets:
                if not ticket.future.done():
                    ticket.future.set_exception(failure)
            return
        self.running |= set(wave.targets)
        self.started |= {s.id for s in plan.start}
        for soulstone in targets:
            self.recovery.track(soulstone)
        self.on_change(set(evict) | {s.id for s in plan.start})
        now = self.clock()
        for soulstone_id in wave.targets:
            self.last_used[soulstone_id] = now
        if plan.stop:
            self.swaps += 1
            self.on_swap(now - began)
        if plan.stop or plan.start:
            self.on_wave(Swap(tuple(s.soulstone.id for s in plan.stop),
                              tuple(s.id for s in plan.start), now - began))  # fmt: skip
        for ticket in wave.tickets:
            if not ticket.future.done():
                if ticket.counts:
                    self.inflight[ticket.soulstone] += 1
                ticket.future.set_result(None)

    def _start_failed(self, wave: Wave, error: ManifestError) -> None:
        """A wave's start failed: count it against each soulstone that failed; retry or give up.

        The tickets of a soulstone that failed wait for its restart (an
        operator's `up` hears of the failure at once); those of the others in
        the wave, stopped again only because of it, go back to the queue.
        """
        self.waves.remove(wave)  # first: tickets put back must not rejoin it
        failures = {f.soulstone: f for f in error.failures}
        for soulstone_id, soulstone in wave.targets.items():
            tickets = [t for t in wave.tickets if t.soulstone == soulstone_id]
            failure = failures.get(soulstone_id)
            if failure is None:
                for ticket in tickets:
                    if not ticket.future.done():
                        self._enqueue(ticket, soulstone)
                continue
            refusal = Unavailable(f"could not start {soulstone_id}: {error}")
            oom = says_out_of_memory(f"{failure.reason}\n{failure.log_tail}")
            self.recovery.failed(soulstone, failure.reason, tickets, refusal, oom)
