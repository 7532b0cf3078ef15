"""The scheduler acts on the wave decisions: in-process, with a fake supervisor and clock."""

from __future__ import annotations

import asyncio
import dataclasses
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import cast

import pytest

from helpers import codex_of, stone
from soulstone.codex.models import Codex, Soulstone
from soulstone.runtimes.base import EngineStatus
from soulstone.supervisor.plan import Plan, make_plan
from soulstone.supervisor.schedule import Scheduler, Unavailable, Wave
from soulstone.supervisor.supervisor import Supervisor


class FakeSupervisor:
    """Manifests at once; records what each manifestation got and what was in flight then."""

    def __init__(self, codex: Codex, active: set[str], inflight: Counter[str]) -> None:
        self.codex = codex
        self.active = set(active)
        self.inflight = inflight
        self.manifests: list[tuple[tuple[str, ...], dict[str, int]]] = []
        self.manifested = asyncio.Event()

    async def statuses(self) -> list[EngineStatus]:
        raise NotImplementedError  # the tests set `running` themselves

    async def manifest_soulstones(self, targets: tuple[Soulstone, ...]) -> Plan:
        running = [s for s in self.codex.soulstones if s.id in self.active]
        plan = make_plan(targets, running)
        self.manifests.append((tuple(t.id for t in targets), dict(+self.inflight)))
        self.active -= {s.soulstone.id for s in plan.stop}
        self.active |= {t.id for t in targets}
        self.manifested.set()
        return plan

    async def stop_soulstones(self, ids: set[str], _reason: str) -> list[str]:
        stopped = sorted(ids & self.active)
        self.active -= ids
        return stopped


class PumpClock:
    """A clock that stands still and tells when it is read while a wave waits."""

    def __init__(self) -> None:
        self.waves: list[Wave] = []
        self.read_with_waves = asyncio.Event()

    def __call__(self) -> float:
        if self.waves:
            self.read_with_waves.set()
        return 0.0


async def until(condition: Callable[[], bool]) -> None:
    """Let the other tasks run until the condition holds (turns of the loop, not time)."""
    for _ in range(1000):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError("the condition never held")


@asynccontextmanager
async def scheduling(
    codex: Codex, running: set[str]
) -> AsyncIterator[tuple[Scheduler, FakeSupervisor, PumpClock]]:
    """A scheduler over a fake supervisor whose deadlines never pass: only events move it."""
    clock = PumpClock()
    supervisor = FakeSupervisor(codex, running, Counter())
    scheduler = Scheduler(cast(Supervisor, supervisor), max_wait=1000.0, drain_timeout=1000.0,
                          clock=clock)  # fmt: skip
    supervisor.inflight = scheduler.inflight
    clock.waves = scheduler.waves
    scheduler.running = set(running)
    try:
        yield scheduler, supervisor, clock
    finally:
        await scheduler.close()


async def test_a_late_member_drains_what_it_conflicts_with() -> None:
    a, b, c, e = stone("a", "g1", "g2"), stone("b", "g3"), stone("c", "g2"), stone("e", "g1")
    async with scheduling(codex_of(a, b, c, e), {"b", "c"}) as (scheduler, supervisor, clock):
        assert scheduler.admit_now(b) and scheduler.admit_now(c)
        a_request = asyncio.create_task(scheduler.acquire(a))
        await clock.read_with_waves.wait()  # the pump is at wave [a], which evicts busy b
        e_request = asyncio.create_task(scheduler.acquire(e))  # e joins; e conflicts with c
        await until(lambda: "e" in scheduler.waves[0].targets)
        scheduler.release(b)
        clock.read_with_waves.clear()
        await clock.read_with_waves.wait()  # the pump has taken its next step
        assert supervisor.manifests == [], "the swap began while c still served a request"
        scheduler.release(c)
        await asyncio.gather(a_request, e_request)
        assert supervisor.manifests == [(("a", "e"), {})]  # nothing in flight at the swap
        assert +scheduler.inflight == {"a": 1, "e": 1}
        assert scheduler.running == {"a", "e"}
        assert not scheduler.admit_now(c), "c was stopped, so it must go through a wave"


async def test_a_wave_removed_by_a_reload_leaves_the_next_one_served() -> None:
    x, y, b = stone("x", "gx"), stone("y", "gy"), stone("b", "gb")
    async with scheduling(codex_of(x, y, b), {"b"}) as (scheduler, supervisor, clock):
        assert scheduler.admit_now(b)
        x_request = asyncio.create_task(scheduler.acquire(x))
        await clock.read_with_waves.wait()  # the pump is at wave [x], which evicts busy b
        y_request = asyncio.create_task(scheduler.acquire(y))
        await until(lambda: len(scheduler.waves) == 2)
        async with scheduler.paused():  # a reload that removes x
            supervisor.codex = codex_of(y, b)
            scheduler.retarget(supervisor.codex)
        with pytest.raises(Unavailable, match="x was removed"):
            await x_request
        scheduler.release(b)
        await supervisor.manifested.wait()
        assert [targets for targets, _ in supervisor.manifests] == [("y",)]
        await y_request
        assert scheduler.running == {"y"}
        assert not scheduler.waves


async def test_a_probe_mid_swap_does_not_route_the_remote_being_swapped_out() -> None:
    far = dataclasses.replace(stone("far", "box"), runtime="remote", remote="http://h:1/v1")
    near = stone("near")  # solitary: conflicts with far, which declares a group
    probes: list[str] = []

    class ProbedMidSwap(FakeSupervisor):
        async def manifest_soulstones(self, targets: tuple[Soulstone, ...]) -> Plan:
            scheduler.remote_routed(far, True)  # far's probe answers while near swaps in
            probes.append("answered")
            return await super().manifest_soulstones(targets)

    supervisor = ProbedMidSwap(codex_of(far, near), {"far"}, Counter())
    scheduler = Scheduler(cast(Supervisor, supervisor), max_wait=0.0, drain_timeout=0.0)
    scheduler.running = {"far"}
    try:
        await scheduler.acquire(near)
        assert probes == ["answered"]
        assert scheduler.running == {"near"}, "a probe routed far beside near"
    finally:
        await scheduler.close()
