"""Engines that die or fail to start: restarts after a backoff, the failed mark, death watches.

The scheduler owns which soulstones run; this keeps, beside it, what goes
wrong with them. Per soulstone, one of:

- nothing to recover: requests go to the wave queue as usual;
- held: a death is being confirmed, or a restart waits for its backoff;
  requests wait here (`held`) and join a wave together when it is time;
- marked failed: `limit` failures within the window; requests are refused at
  once (EngineFailed, 503 with Retry-After) until the mark ends or `clear`.

Deaths are heard of at once: from a request whose connection to the engine
broke (the scheduler's `died`), or from the engine's pidfd (`ExitWatch`).
The decisions (delays, when to give up) are `restarts.py`'s.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass
from typing import Any, Literal

from soulstone.codex.models import Codex, Soulstone
from soulstone.errors import Refusal
from soulstone.supervisor.restarts import (
    EngineFailed,
    Failures,
    GiveUp,
    OutOfMemory,
    RestartPolicy,
    Unavailable,
    Verdict,
)
from soulstone.supervisor.supervisor import Supervisor
from soulstone.supervisor.watch import ExitWatch

CONFIRM_S = 1.0  # a broken connection: how long the engine's pidfd gets to say it ended

NoteKind = Literal["died", "restarting", "marked", "cleared", "connection"]


@dataclass(eq=False)
class Ticket:
    """One wait for an engine: a request, an operator's `up`, or the gateway's own restart.

    `counts`: a request, counted in flight once admitted. `retries`: waits on
    through the restarts after a failed start (an operator's `up` does not:
    it hears of the first failure).
    """

    soulstone: str
    future: asyncio.Future[None]
    counts: bool = True
    retries: bool = True


@dataclass(frozen=True)
class Note:
    """What recovery saw or did, for the gateway's log, live feed and metrics.

    died: an engine ended on its own; restarting: a restart begins (after its
    backoff); marked: too many failures, requests are refused; cleared: a mark
    or a pending restart was lifted; connection: a connection broke, but the
    engine still runs (nothing is restarted).
    """

    kind: NoteKind
    soulstone: str
    detail: str = ""


def _fail(ticket: Ticket, refusal: Refusal) -> None:
    if not ticket.future.done():
        ticket.future.set_exception(refusal)


class Recovery:
    """Restarts dead engines with backoff; marks, and refuses, those that keep failing."""

    def __init__(
        self, supervisor: Supervisor, enqueue: Callable[[Ticket, Soulstone], None],
        on_exit: Callable[[str], None], policy: RestartPolicy | None = None,
        on_note: Callable[[Note], None] | None = None,
        clock: Callable[[], float] = time.monotonic, draw: Callable[[], float] = random.random,
    ) -> None:  # fmt: skip
        self.supervisor = supervisor
        self.enqueue = enqueue  # into the wave queue (the scheduler's)
        self.on_exit = on_exit  # a watched engine's process ended (the scheduler's `died`)
        self.policy = policy or RestartPolicy()
        self.on_note = on_note or (lambda _note: None)
        self.clock, self.draw = clock, draw
        self.failures: dict[str, Failures] = {}
        self.held: dict[str, list[Ticket]] = {}
        self.reasons: dict[str, str] = {}  # why a held soulstone waits
        self.watch = ExitWatch()
        self._timers: dict[str, asyncio.Task[None]] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def codex(self) -> Codex:
        """The codex in force (the supervisor's)."""
        return self.supervisor.codex

    # -- what requests see ----------------------------------------------------------------

    def marked(self, soulstone_id: str) -> bool:
        """True while this soulstone is marked failed."""
        failures = self.failures.get(soulstone_id)
        return failures is not None and failures.marked(self.clock()) is not None

    def check(self, soulstone: Soulstone) -> None:
        """Refuse at once (EngineFailed) a request for a soulstone marked failed."""
        failures = self.failures.get(soulstone.id)
        if failures is None:
            return
        now = self.clock()
        mark = failures.marked(now)
        if mark is not None:
            raise EngineFailed(soulstone.id, mark, now)

    def hold(self, ticket: Ticket) -> bool:
        """Keep a ticket for a soulstone awaiting its restart; False when none awaits one."""
        tickets = self.held.get(ticket.soulstone)
        if tickets is None:
            return False
        tickets.append(ticket)
        return True

    def waiting(self, soulstone_id: str) -> int:
        """Requests waiting for this soulstone's restart."""
        return sum(1 for t in self.held.get(soulstone_id, ()) if t.counts and not t.future.done())

    def answered(self, soulstone_id: str) -> None:
        """The engine answered a request: its next restart waits the shortest backoff again."""
        failures = self.failures.get(soulstone_id)
        if failures is not None:
            failures.answered()

    def notes(self) -> dict[str, tuple[bool, str]]:
        """Soulstone id -> (marked failed?, why) for each soulstone marked or awaiting a restart."""
        now = self.clock()
        found = {sid: (False, reason) for sid, reason in self.reasons.items()}
        for sid, failures in self.failures.items():
            mark = failures.marked(now)
            if mark is not None:
                left = max(0.0, mark.until - now)
                found[sid] = (True, f"marked failed: {mark.reason}; refused for {left:.0f} s "
                              f"more, or until `soulstone up {sid}`")  # fmt: skip
        return found

    # -- what happened to engines ---------------------------------------------------------

    def track(self, soulstone: Soulstone) -> None:
        """Watch a running engine's process, so that its death is heard of at once."""
        if not self.watch.watching(soulstone.id):
            self._spawn(self._track(soulstone))

    async def _track(self, soulstone: Soulstone) -> None:
        status = await self.supervisor.status(soulstone, check_health=False)
        sid = soulstone.id
        if self.watch.watching(sid):
            return
        if status.active and status.pid:
            self.watch.add(sid, status.pid, lambda: self.on_exit(sid))
        elif status.state == "failed":  # it ended on its own before it could be watched
            self.on_exit(sid)

    def died(self, soulstone: Soulstone, reason: str) -> None:
        """A running engine stopped answering or ended: confirm it, then restart it (or mark it)."""
        if soulstone.id in self.held:
            return
        self.held[soulstone.id] = []
        self.reasons[soulstone.id] = f"restarting: {reason}"
        self._spawn(self._confirm(soulstone, reason))

    async def _confirm(self, soulstone: Soulstone, reason: str) -> None:
        sid = soulstone.id
        ended = self.watch.ended(sid)
        if ended is not None:
            try:
                await asyncio.wait_for(ended.wait(), CONFIRM_S)
                gone = True
            except TimeoutError:
                gone = False
        else:
            gone = not (await self.supervisor.status(soulstone, check_health=False)).active
        if not gone:
            self.on_note(Note("connection", sid, reason))
            self._release(sid)  # the waiting requests go on to the engine, which still runs
            return
        self.watch.remove(sid)
        status = await self.supervisor.status(soulstone, check_health=False)
        why = "it died" + (f" (exit {status.exit_code})" if status.exit_code is not None else "")
        self.on_note(Note("died", sid, f"{why}; noticed because {reason}"))
        restart = Ticket(sid, asyncio.get_running_loop().create_future(), counts=False)
        restart.future.add_done_callback(lambda f: f.cancelled() or f.exception())
        self.failed(soulstone, why, [restart])

    def failed(
        self, soulstone: Soulstone, reason: str, tickets: Iterable[Ticket] = (),
        refusal: Refusal | None = None, out_of_memory: bool = False,
    ) -> Verdict:  # fmt: skip
        """Count a death or failed start; hold its tickets for a restart, or mark it failed.

        Tickets that do not retry get `refusal` now; when the engine ran out of
        memory, requests get OutOfMemory now (a restart still follows).
        """
        sid = soulstone.id
        now = self.clock()
        verdict = self.failures.setdefault(sid, Failures()).record(self.policy, now, reason,
                                                                   self.draw())  # fmt: skip
        waiting = [*self.held.pop(sid, ()), *tickets]
        self._cancel_timer(sid)
        if isinstance(verdict, GiveUp):
            self.reasons.pop(sid, None)
            refused = EngineFailed(sid, verdict.mark, now)
            for ticket in waiting:
                _fail(ticket, refused)
            self.on_note(Note("marked", sid, verdict.mark.reason))
            return verdict
        now_refused = OutOfMemory(sid, "while starting") if out_of_memory else refusal
        kept = []
        for ticket in waiting:
            if not ticket.future.done() and now_refused is not None and (
                    not ticket.retries or (out_of_memory and ticket.counts)):  # fmt: skip
                _fail(ticket, now_refused)
            elif not ticket.future.done():
                kept.append(ticket)
        if not kept:
            self.reasons.pop(sid, None)
            return verdict
        self.held[sid] = kept
        self.reasons[sid] = f"restarting in {verdict.delay:.1f} s; last failure: {reason}"
        self._timers[sid] = asyncio.create_task(self._restart_after(sid, verdict.delay))
        return verdict

    async def _restart_after(self, soulstone_id: str, delay: float) -> None:
        await asyncio.sleep(delay)
        self._timers.pop(soulstone_id, None)
        if any(not t.future.done() for t in self.held.get(soulstone_id, ())):
            self.on_note(Note("restarting", soulstone_id))
        self._release(soulstone_id)

    # -- what operators and reloads do ----------------------------------------------------

    def clear(self, ids: Iterable[str]) -> None:
        """Lift the failed mark and the backoff (`soulstone up`, a new declaration): start now."""
        for sid in ids:
            failures = self.failures.pop(sid, None)
            if sid in self.held or (failures is not None and failures.mark is not None):
                self.on_note(Note("cleared", sid))
            self._release(sid)

    def stopping(self, ids: Iterable[str]) -> None:
        """These engines are stopped on purpose: no death to hear of, no restart of our own."""
        for sid in ids:
            self.watch.remove(sid)
            for ticket in self.held.get(sid, ()):
                if not ticket.counts and ticket.retries:
                    ticket.future.cancel()  # the gateway's own restart: no longer wanted
            self._release(sid)  # requests still waiting start it again, as new ones would

    def retarget(self, codex: Codex) -> None:
        """After a reload: forget soulstones that are gone (their waiting requests fail)."""
        for sid in [s for s in {*self.held, *self.failures} if codex.get(s) is None]:
            self.failures.pop(sid, None)
            self._cancel_timer(sid)
            self.reasons.pop(sid, None)
            for ticket in self.held.pop(sid, ()):
                _fail(ticket, Unavailable(f"{sid} was removed"))
            self.watch.remove(sid)

    def close(self) -> None:
        """Stop every timer and watch; fail whatever still waits."""
        for task in [*self._timers.values(), *self._tasks]:
            task.cancel()
        self._timers.clear()
        for tickets in self.held.values():
            for ticket in tickets:
                _fail(ticket, Unavailable("the gateway is shutting down"))
        self.held.clear()
        self.reasons.clear()
        self.watch.close()

    # -- plumbing -------------------------------------------------------------------------

    def _release(self, soulstone_id: str) -> None:
        """The held tickets join the wave queue now."""
        self._cancel_timer(soulstone_id)
        self.reasons.pop(soulstone_id, None)
        tickets = [t for t in self.held.pop(soulstone_id, ()) if not t.future.done()]
        soulstone = self.codex.get(soulstone_id)
        for ticket in tickets:
            if soulstone is None:
                _fail(ticket, Unavailable(f"{soulstone_id} was removed"))
            else:
                self.enqueue(ticket, soulstone)

    def _cancel_timer(self, soulstone_id: str) -> None:
        timer = self._timers.pop(soulstone_id, None)
        if timer is not None and timer is not asyncio.current_task():
            timer.cancel()

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
