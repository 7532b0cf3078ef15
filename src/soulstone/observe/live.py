"""The gateway's live feed: what just happened, for the dashboard (never a request's text).

One hub per gateway. The request path, the supervisor, the scheduler and the
adapter manager report to it as things happen: requests as they settle (id,
model, client, status, code, time), swaps (what stopped, what started, how
long), engine state changes, adapter loads and evictions, and council runs
(assembled from the settled calls of their personas). It keeps a ring of the
most recent events and hands each new one to every subscriber without ever
waiting: a subscriber whose backlog is full is dropped (its feed ends; the
dashboard reconnects and reloads), so a slow browser never slows a request.

Everything here runs on the gateway's event loop; nothing blocks.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from soulstone.supervisor.schedule import Swap
from soulstone.supervisor.supervisor import Event

RING_SIZE = 2000  # events kept for the pages' first load and for reconnects
BACKLOG = 512  # events one subscriber may have unread before it is dropped
MINUTES_KEPT = 15  # refusals and requests by minute
COUNCIL_RUNS = 50  # the last council runs kept
PENDING_RUNS = 256  # councils whose personas answered but whose run has not settled yet

Kind = Literal["request", "swap", "engine", "adapter", "council"]
ENGINE_STATES = {"stopping": "stopping", "stopped": "stopped", "starting": "starting",
                 "healthy": "running", "failed": "failed", "asleep": "sleeping",
                 "waking": "starting"}  # fmt: skip


@dataclass(frozen=True, slots=True)
class LiveEvent:
    """One thing that happened: its place in the feed, wall-clock time, kind and fields."""

    seq: int
    at: float
    kind: Kind
    data: Mapping[str, Any]

    def as_dict(self) -> dict[str, Any]:
        """The event as the dashboard reads it: seq, at, kind and the kind's own fields."""
        return {"seq": self.seq, "at": self.at, "kind": self.kind, **self.data}


def visible(event: LiveEvent, client: str, admin: bool) -> bool:
    """Whether a dashboard viewer sees this event.

    Admin clients see everything. Others see engines, swaps and adapters, but
    only their own requests and council runs (who asks for what is admin data,
    as on `/metrics`).
    """
    if admin or event.kind not in ("request", "council"):
        return True
    return event.data.get("client") == client


class Subscription:
    """One reader of the live feed: new events in order, None once it was dropped or closed."""

    def __init__(self, limit: int, on_close: Callable[[Subscription], None]) -> None:
        self._events: deque[LiveEvent] = deque()
        self._limit = limit
        self._wake = asyncio.Event()
        self._on_close = on_close
        self.closed = False

    def offer(self, event: LiveEvent) -> bool:
        """Queue an event without waiting; False when the backlog is full (or closed)."""
        if self.closed or len(self._events) >= self._limit:
            return False
        self._events.append(event)
        self._wake.set()
        return True

    async def next(self) -> LiveEvent | None:
        """The next event, waiting for one; None when the subscription ended."""
        while not self._events:
            if self.closed:
                return None
            self._wake.clear()
            await self._wake.wait()
        return self._events.popleft()

    def close(self) -> None:
        """End the subscription: what is unread is discarded, `next` answers None."""
        if not self.closed:
            self.closed = True
            self._events.clear()
            self._wake.set()
            self._on_close(self)


class LiveHub:
    """The ring of recent events, the subscribers, and the small tallies the pages show."""

    def __init__(self, ring: int = RING_SIZE, backlog: int = BACKLOG,
                 clock: Callable[[], float] = time.time) -> None:  # fmt: skip
        self._ring: deque[LiveEvent] = deque(maxlen=ring)
        self._backlog = backlog
        self._clock = clock
        self._subscribers: set[Subscription] = set()
        self._seq = 0
        self._minutes: OrderedDict[int, tuple[Counter[str], list[int]]] = OrderedDict()
        self._personas: OrderedDict[str, list[dict[str, Any]]] = OrderedDict()
        self._councils: deque[dict[str, Any]] = deque(maxlen=COUNCIL_RUNS)
        self.dropped = 0  # subscribers dropped for falling behind

    # -- the feed -----------------------------------------------------------------------

    @property
    def last_seq(self) -> int:
        """The sequence number of the newest event (0 before the first)."""
        return self._seq

    def publish(self, kind: Kind, data: Mapping[str, Any]) -> LiveEvent:
        """Record an event and offer it to every subscriber (dropping those that lag)."""
        self._seq += 1
        event = LiveEvent(self._seq, self._clock(), kind, data)
        self._ring.append(event)
        for subscriber in list(self._subscribers):
            if not subscriber.offer(event):
                self.dropped += 1
                subscriber.close()
        return event

    def subscribe(self) -> Subscription:
        """A new reader of events published from now on."""
        subscription = Subscription(self._backlog, self._subscribers.discard)
        self._subscribers.add(subscription)
        return subscription

    @property
    def subscribers(self) -> int:
        """How many readers the feed has now."""
        return len(self._subscribers)

    def recent(self, after: int = 0, kinds: Iterable[str] | None = None) -> list[LiveEvent]:
        """Events still in the ring with a sequence number above `after`, oldest first."""
        wanted = None if kinds is None else set(kinds)
        return [e for e in self._ring
                if e.seq > after and (wanted is None or e.kind in wanted)]  # fmt: skip

    def close(self) -> None:
        """End every subscription (the gateway stops)."""
        for subscriber in list(self._subscribers):
            subscriber.close()

    # -- what happened ------------------------------------------------------------------

    def request(self, request_id: str, model: str | None, client: str | None, status: int,
                code: str | None, seconds: float, way: str, council: str | None = None,
                persona: str | None = None) -> None:  # fmt: skip
        """A request settled: publish it, tally it, and fold council calls into their run."""
        ms = round(seconds * 1000, 1)
        data = {"id": request_id, "model": model, "client": client, "status": status,
                "code": code, "ms": ms, "way": way, "council": council,
                "persona": persona}  # fmt: skip
        event = self.publish("request", data)
        codes, counts = self._minute(event.at)
        counts[0] += 1
        if code is not None:
            codes[code] += 1
        if council is not None and persona is not None:
            self._persona_answered(request_id, persona, model, status, code, ms)
        elif council is not None:
            self._council_settled(request_id, council, client, status, code, ms)

    def swap(self, swap: Swap) -> None:
        """A wave was executed: what it stopped and started, and how long it took."""
        self.publish("swap", {"stopped": list(swap.stopped), "started": list(swap.started),
                              "seconds": round(swap.seconds, 3)})  # fmt: skip

    def engine(self, soulstone: str, state: str, detail: str = "",
               seconds: float | None = None) -> None:  # fmt: skip
        """An engine changed state (starting, running, stopping, stopped, failed)."""
        took = None if seconds is None else round(seconds, 3)
        self.publish("engine", {"soulstone": soulstone, "state": state, "detail": detail,
                                "seconds": took})  # fmt: skip

    def supervisor_event(self, event: Event) -> None:
        """The supervisor's progress as engine state changes (its waits are left out)."""
        state = ENGINE_STATES.get(event.kind)
        if state is not None:
            self.engine(event.soulstone, state, event.detail, event.elapsed or None)

    def adapter(self, action: str, soulstone: str, adapter: str) -> None:
        """An adapter was loaded into, evicted from or unloaded from an engine."""
        self.publish("adapter", {"action": action, "soulstone": soulstone, "adapter": adapter})

    # -- tallies ------------------------------------------------------------------------

    def minutes(self, now: float | None = None) -> list[dict[str, Any]]:
        """Requests and refusals by code for each of the last minutes, oldest first."""
        current = int((self._clock() if now is None else now) // 60)
        rows = []
        for minute in range(current - MINUTES_KEPT + 1, current + 1):
            codes, counts = self._minutes.get(minute, (Counter(), [0]))
            rows.append({"minute": minute * 60, "requests": counts[0], "refusals": dict(codes)})
        return rows

    def councils(self) -> list[dict[str, Any]]:
        """The last council runs, newest last: each persona's time and outcome."""
        return list(self._councils)

    def _minute(self, now: float) -> tuple[Counter[str], list[int]]:
        minute = int(now // 60)
        found = self._minutes.get(minute)
        if found is None:
            found = self._minutes[minute] = (Counter(), [0])
            while len(self._minutes) > MINUTES_KEPT:
                self._minutes.popitem(last=False)
        return found

    def _persona_answered(self, request_id: str, persona: str, model: str | None, status: int,
                          code: str | None, ms: float) -> None:  # fmt: skip
        parent = request_id.removesuffix(f".{persona}")
        calls = self._personas.get(parent)
        if calls is None:
            calls = self._personas[parent] = []
            while len(self._personas) > PENDING_RUNS:
                self._personas.popitem(last=False)
        outcome = "answered" if status == 200 and code is None else (code or str(status))
        calls.append({"persona": persona, "model": model, "status": status, "code": code,
                      "ms": ms, "outcome": outcome})  # fmt: skip

    def _council_settled(self, request_id: str, council: str, client: str | None, status: int,
                         code: str | None, ms: float) -> None:  # fmt: skip
        run = {"id": request_id, "council": council, "client": client, "status": status,
               "code": code, "ms": ms, "at": self._clock(),
               "personas": self._personas.pop(request_id, [])}  # fmt: skip
        self._councils.append(run)
        self.publish("council", run)
