"""The live feed: bounded, never waiting on a reader, and the tallies the dashboard shows."""

from __future__ import annotations

import asyncio

from soulstone.observe.live import LiveHub, visible
from soulstone.supervisor.schedule import Swap
from soulstone.supervisor.supervisor import Event


class Clock:
    def __init__(self, now: float = 6000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def settle(hub: LiveHub, request_id: str = "r1", client: str = "ann", code: str | None = None,
           status: int = 200, **extra: str) -> None:  # fmt: skip
    hub.request(request_id, "m", client, status, code, 0.0123, "http", extra.get("council"),
                extra.get("persona"))  # fmt: skip


def test_a_settled_request_is_published_without_text() -> None:
    hub = LiveHub()
    settle(hub)
    [event] = hub.recent()
    assert event.kind == "request"
    assert event.as_dict() == {
        "seq": 1, "at": event.at, "kind": "request", "id": "r1", "model": "m", "client": "ann",
        "status": 200, "code": None, "ms": 12.3, "way": "http", "council": None, "persona": None,
    }  # fmt: skip


def test_the_ring_keeps_only_the_newest_events() -> None:
    hub = LiveHub(ring=3)
    for number in range(5):
        settle(hub, f"r{number}")
    assert [e.data["id"] for e in hub.recent()] == ["r2", "r3", "r4"]
    assert [e.seq for e in hub.recent(after=4)] == [5]
    assert hub.last_seq == 5


async def test_subscribers_get_events_in_order() -> None:
    hub = LiveHub()
    subscription = hub.subscribe()
    settle(hub, "a")
    hub.swap(Swap(("x",), ("y",), 1.5))
    first, second = await subscription.next(), await subscription.next()
    assert first is not None and first.data["id"] == "a"
    assert second is not None and second.kind == "swap"
    assert second.data == {"stopped": ["x"], "started": ["y"], "seconds": 1.5}


async def test_a_waiting_subscriber_wakes_on_the_next_event() -> None:
    hub = LiveHub()
    subscription = hub.subscribe()
    waiting = asyncio.create_task(subscription.next())
    await asyncio.sleep(0)  # let it wait
    assert not waiting.done()
    settle(hub, "woke")
    event = await asyncio.wait_for(waiting, 5)
    assert event is not None and event.data["id"] == "woke"


async def test_a_slow_subscriber_is_dropped_and_never_blocks_publishing() -> None:
    hub = LiveHub(backlog=2)
    slow, fast = hub.subscribe(), hub.subscribe()
    settle(hub, "1")
    settle(hub, "2")
    assert (await fast.next()) is not None and (await fast.next()) is not None
    settle(hub, "3")  # slow has 2 unread: full, so it is dropped; fast takes it
    assert slow.closed and hub.dropped == 1 and hub.subscribers == 1
    assert await slow.next() is None  # its unread events are discarded too
    event = await fast.next()
    assert event is not None and event.data["id"] == "3"


async def test_close_ends_every_subscription() -> None:
    hub = LiveHub()
    subscription = hub.subscribe()
    waiting = asyncio.create_task(subscription.next())
    await asyncio.sleep(0)
    hub.close()
    assert await asyncio.wait_for(waiting, 5) is None
    assert hub.subscribers == 0


def test_refusals_are_counted_by_code_and_minute() -> None:
    clock = Clock(60 * 100 + 5)
    hub = LiveHub(clock=clock)
    settle(hub, code="RATE_LIMITED", status=429)
    settle(hub, code="RATE_LIMITED", status=429)
    settle(hub)
    clock.now += 60
    settle(hub, code="GATEWAY_BUSY", status=503)
    rows = hub.minutes()
    assert len(rows) == 15 and rows[-1]["minute"] == 60 * 101
    assert rows[-2] == {"minute": 6000, "requests": 3, "refusals": {"RATE_LIMITED": 2}}
    assert rows[-1] == {"minute": 6060, "requests": 1, "refusals": {"GATEWAY_BUSY": 1}}
    assert all(row["requests"] == 0 for row in rows[:-2])


def test_minutes_older_than_the_window_are_forgotten() -> None:
    clock = Clock(0)
    hub = LiveHub(clock=clock)
    for _ in range(20):
        settle(hub, code="X", status=400)
        clock.now += 60
    assert sum(row["requests"] for row in hub.minutes()) == 14  # the last 15 minutes, now empty


def test_a_council_run_gathers_its_personas_calls() -> None:
    hub = LiveHub()
    settle(hub, "c1.maat", council="pantheon", persona="maat")
    settle(hub, "c1.thoth", council="pantheon", persona="thoth", code="COMPLETION_TIMEOUT",
           status=504)  # fmt: skip
    settle(hub, "other.maat", council="pantheon", persona="maat")
    settle(hub, "c1", council="pantheon")
    [run] = hub.councils()
    assert run["id"] == "c1" and run["council"] == "pantheon" and run["client"] == "ann"
    assert [(p["persona"], p["outcome"]) for p in run["personas"]] == [
        ("maat", "answered"), ("thoth", "COMPLETION_TIMEOUT")]  # fmt: skip
    assert hub.recent()[-1].kind == "council"


def test_supervisor_events_become_engine_states_and_waits_are_left_out() -> None:
    hub = LiveHub()
    for kind in ("starting", "waiting", "healthy", "stopping", "stopped", "failed"):
        hub.supervisor_event(Event(kind, "a", elapsed=0.5))
    states = [e.data["state"] for e in hub.recent()]
    assert states == ["starting", "running", "stopping", "stopped", "failed"]


def test_others_see_only_their_own_requests() -> None:
    hub = LiveHub()
    settle(hub, "mine", client="ann")
    settle(hub, "theirs", client="bob")
    hub.adapter("load", "a", "lilith")
    ann = [e.kind + ":" + str(e.data.get("id")) for e in hub.recent() if visible(e, "ann", False)]
    assert ann == ["request:mine", "adapter:None"]
    assert all(visible(e, "ann", True) for e in hub.recent())
