"""The scheduler's recovery, in-process: failed starts retried then marked, deaths restarted."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import cast

import pytest

from helpers import codex_of, stone
from soulstone.codex.models import Codex, Soulstone
from soulstone.runtimes.base import EngineStatus
from soulstone.supervisor.plan import Plan, make_plan
from soulstone.supervisor.recovery import Note
from soulstone.supervisor.restarts import EngineFailed, OutOfMemory, RestartPolicy
from soulstone.supervisor.schedule import Scheduler
from soulstone.supervisor.supervisor import Failure, ManifestError, Supervisor

POLICY = RestartPolicy(backoff=0.0, limit=3, window=300.0)  # restarts at once: no clock to wait


class BrokenSupervisor:
    """Starts what it is asked to, except soulstones in `broken` (their start fails)."""

    def __init__(self, codex: Codex) -> None:
        self.codex = codex
        self.active: set[str] = set()
        self.broken: dict[str, str] = {}  # id -> the end of its log
        self.starts: list[str] = []

    async def manifest_soulstones(self, targets: tuple[Soulstone, ...]) -> Plan:
        self.starts += [t.id for t in targets if t.id not in self.active]
        failed = [Failure(t.id, "exited before it was healthy (exit 1)", self.broken[t.id])
                  for t in targets if t.id in self.broken]  # fmt: skip
        if failed:
            raise ManifestError(failed)
        plan = make_plan(targets, [s for s in self.codex.soulstones if s.id in self.active])
        self.active |= {t.id for t in targets}
        return plan

    async def status(self, soulstone: Soulstone, check_health: bool = True) -> EngineStatus:
        return EngineStatus(soulstone.id, "running" if soulstone.id in self.active else "failed")

    async def stop_soulstones(self, ids: set[str], _reason: str) -> list[str]:
        stopped = sorted(ids & self.active)
        self.active -= ids
        return stopped


@asynccontextmanager
async def recovering(*soulstones: Soulstone) -> AsyncIterator[
        tuple[Scheduler, BrokenSupervisor, list[Note]]]:  # fmt: skip
    supervisor = BrokenSupervisor(codex_of(*soulstones))
    notes: list[Note] = []
    scheduler = Scheduler(cast(Supervisor, supervisor), max_wait=0.0, drain_timeout=1.0,
                          restarts=POLICY, on_note=notes.append)  # fmt: skip
    try:
        yield scheduler, supervisor, notes
    finally:
        await scheduler.close()


async def test_a_start_that_keeps_failing_is_retried_then_marked_and_refused_at_once() -> None:
    a = stone("a")
    async with recovering(a) as (scheduler, supervisor, notes):
        supervisor.broken["a"] = "Traceback: no such file"
        with pytest.raises(EngineFailed) as caught:
            await scheduler.acquire(a)  # waits through the restarts, then the mark
        assert supervisor.starts == ["a", "a", "a"]
        assert [n.kind for n in notes] == ["restarting", "restarting", "marked"]
        assert caught.value.retry_after == 300
        with pytest.raises(EngineFailed):
            await scheduler.acquire(a)
        assert supervisor.starts == ["a", "a", "a"], "a refused request started nothing"
        assert scheduler.recovery.notes()["a"][0] is True
        del supervisor.broken["a"]
        scheduler.recovery.clear(["a"])  # what `soulstone up a` does first
        await scheduler.acquire(a)
        assert scheduler.running == {"a"} and supervisor.starts[-1] == "a"
        assert "a" not in scheduler.recovery.notes()


async def test_an_operators_up_hears_of_the_first_failure() -> None:
    a = stone("a")
    async with recovering(a) as (scheduler, supervisor, _notes):
        supervisor.broken["a"] = ""
        with pytest.raises(Exception, match="could not start a"):
            await scheduler.manifest((a,))
        assert supervisor.starts == ["a"]  # nobody else waits: no restart follows


async def test_out_of_memory_at_start_answers_the_waiting_requests_with_its_code() -> None:
    a = stone("a")
    async with recovering(a) as (scheduler, supervisor, _notes):
        supervisor.broken["a"] = "torch.OutOfMemoryError: CUDA out of memory."
        with pytest.raises(OutOfMemory, match="while starting"):
            await scheduler.acquire(a)
        assert supervisor.starts == ["a"]


async def test_an_engine_that_dies_is_restarted_with_nobody_asking() -> None:
    a, b = stone("a", "g"), stone("b", "g")
    async with recovering(a, b) as (scheduler, supervisor, notes):
        await scheduler.acquire(a)
        await scheduler.acquire(b)
        scheduler.release(a)
        supervisor.active.discard("a")  # its process ended
        scheduler.died(a, "a request's connection to it broke")
        assert "a" not in scheduler.running
        restarted = asyncio.Event()
        scheduler.on_change = lambda ids: restarted.set() if "a" in ids else None
        await restarted.wait()
        assert scheduler.running == {"a", "b"}
        assert [n.kind for n in notes] == ["died", "restarting"]
        assert supervisor.starts == ["a", "b", "a"]


async def test_an_engine_that_dies_before_it_is_watched_is_restarted_all_the_same() -> None:
    a = stone("a")

    class DiesAtOnce(BrokenSupervisor):
        async def manifest_soulstones(self, targets: tuple[Soulstone, ...]) -> Plan:
            plan = await super().manifest_soulstones(targets)
            if self.starts == ["a"]:
                self.active.discard("a")  # healthy, then dead before anyone watched it
            return plan

    supervisor = DiesAtOnce(codex_of(a))
    scheduler = Scheduler(cast(Supervisor, supervisor), max_wait=0.0, drain_timeout=1.0,
                          restarts=POLICY)  # fmt: skip
    restarted = asyncio.Event()
    scheduler.on_change = lambda ids: restarted.set() if supervisor.starts == ["a", "a"] else None
    try:
        await scheduler.acquire(a)
        await asyncio.wait_for(restarted.wait(), 30)  # a bound, so that a miss fails, not hangs
        assert supervisor.starts == ["a", "a"]
        assert scheduler.running == {"a"}
    finally:
        await scheduler.close()


async def test_a_broken_connection_to_a_running_engine_restarts_nothing() -> None:
    a = stone("a")
    async with recovering(a) as (scheduler, supervisor, notes):
        await scheduler.acquire(a)
        scheduler.release(a)
        scheduler.died(a, "a request's connection to it broke")  # but the engine still runs
        await scheduler.acquire(a)
        assert supervisor.starts == ["a"]
        assert [n.kind for n in notes] == ["connection"]
        assert scheduler.running == {"a"}
        assert not scheduler.recovery.failures
