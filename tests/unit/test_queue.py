"""The scheduler's wave decisions as pure functions: join, evict, and the pump's next step."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers import stone
from soulstone.codex.conflicts import in_conflict
from soulstone.codex.models import Soulstone
from soulstone.supervisor import queue
from soulstone.supervisor.queue import (
    Drain,
    Execute,
    Flow,
    Rest,
    Step,
    WaveState,
    evictions,
    next_step,
    pick_wave,
)

A1, A2, B1 = stone("a1", "ga"), stone("a2", "ga"), stone("b1", "gb")
AB, SOLO = stone("ab", "ga", "gb"), stone("solo")


def wave(*targets: Soulstone, executing: bool = False) -> WaveState:
    return WaveState(targets, deadline=10.0, executing=executing)


@pytest.mark.parametrize(
    ("waves", "soulstone", "expected"),
    [
        ([], A1, None),  # no wave yet: a new one
        ([wave(A1)], A2, 0),  # joins an existing wave it runs beside
        ([wave(A1)], B1, None),  # a conflicting request forms a second wave
        ([wave(A1), wave(B1)], B1, 1),  # the later wave that already holds it
        ([wave(A1), wave(B1)], AB, 0),  # the first wave it can run beside
        ([wave(A1), wave(B1)], A2, 0),
        ([wave(A1, executing=True)], A2, None),  # a swapping wave takes no new member
        ([wave(A1, executing=True), wave(B1)], A2, None),  # ...nor does a conflicting one
        ([wave(A1, executing=True)], A1, 0),  # a member rides along with its swap
        ([wave(A1)], SOLO, None),  # a solitary soulstone runs beside nobody
        ([wave(SOLO)], SOLO, 0),
        ([wave(A1, AB)], B1, None),  # beside one member is not enough
    ],
)
def test_which_wave_a_request_joins(
    waves: list[WaveState], soulstone: Soulstone, expected: int | None
) -> None:
    assert pick_wave(waves, soulstone) == expected


@pytest.mark.parametrize(
    ("targets", "running", "expected"),
    [
        ((A1,), (A2, B1, SOLO), {"b1", "solo"}),  # conflicting running soulstones only
        ((AB,), (A1, B1), set()),  # a target sharing a group with each evicts nothing
        ((A1, AB), (B1,), {"b1"}),  # one conflicting member is enough
        ((SOLO,), (SOLO, A1), {"a1"}),  # never the target itself
        ((A1,), (), set()),
        ((), (A1,), set()),
    ],
)
def test_which_running_soulstones_a_wave_evicts(
    targets: tuple[Soulstone, ...], running: tuple[Soulstone, ...], expected: set[str]
) -> None:
    assert evictions(targets, running) == expected


B_BUSY = {"b1": 2}
DRAINING = WaveState((A1,), deadline=10.0, drain_deadline=20.0)


@pytest.mark.parametrize(
    ("waves", "running", "inflight", "now", "expected"),
    [
        ([], (B1,), B_BUSY, 0.0, Rest()),  # no wave: nothing to do
        ([wave(A1)], (), {}, 0.0, Execute(frozenset())),  # nothing to evict: swap at once
        ([wave(A1)], (B1,), {}, 0.0, Execute(frozenset({"b1"}))),  # evicted idle: execute
        ([wave(A1)], (B1,), {"b1": 0}, 0.0, Execute(frozenset({"b1"}))),
        ([wave(A1)], (B1, A2), {"a2": 3}, 0.0, Execute(frozenset({"b1"}))),  # a2 stays
        ([wave(A1)], (B1,), B_BUSY, 0.0, Flow(10.0)),  # keep flowing before the deadline
        ([wave(A1)], (B1,), B_BUSY, 9.9, Flow(10.0)),
        ([wave(A1)], (B1,), B_BUSY, 10.0, Drain(15.0, frozenset({"b1"}))),  # drain after it
        ([wave(A1)], (B1,), B_BUSY, 12.0, Drain(17.0, frozenset({"b1"}))),
        ([DRAINING], (B1,), B_BUSY, 12.0, Drain(20.0, frozenset({"b1"}))),  # the drain goes on
        ([DRAINING], (B1,), B_BUSY, 20.0, Execute(frozenset({"b1"}))),  # drain time is up
        ([DRAINING], (B1,), {}, 12.0, Execute(frozenset({"b1"}))),  # drained: execute
        ([wave(AB, A1)], (B1,), B_BUSY, 0.0, Flow(10.0)),  # a late member's conflicts count
        ([wave(A1), wave(B1)], (B1,), B_BUSY, 0.0, Flow(10.0)),  # only the head wave acts
        ([wave(B1), wave(A1)], (B1,), B_BUSY, 0.0, Execute(frozenset())),
    ],
)
def test_what_the_pump_does_next(
    waves: list[WaveState],
    running: tuple[Soulstone, ...],
    inflight: dict[str, int],
    now: float,
    expected: Step,
) -> None:
    assert next_step(waves, running, inflight, now, drain_timeout=5.0) == expected


# Random soulstones over a few groups, some solitary; ids are their index.
STONES = st.lists(st.frozensets(st.sampled_from(["g1", "g2", "g3"]), max_size=2), min_size=1,
                  max_size=6).map(
    lambda groups: [stone(f"s{i}", *sorted(g)) for i, g in enumerate(groups)]
)  # fmt: skip
# An operation: a request for the soulstone at this index, or the head wave
# beginning ("execute") or finishing ("finish") its swap.
OPERATIONS = st.lists(st.integers(0, 5) | st.sampled_from(["execute", "finish"]), max_size=40)


def can_run_beside(soulstone: Soulstone, members: tuple[Soulstone, ...]) -> bool:
    return not any(in_conflict(soulstone, m) for m in members)


@settings(max_examples=300, deadline=None)
@given(STONES, OPERATIONS, st.data())
def test_waves_built_request_by_request_keep_their_promises(
    stones: list[Soulstone], operations: list[int | str], data: st.DataObject
) -> None:
    waves: list[WaveState] = []
    for operation in operations:
        if operation == "execute" and waves:
            waves[0] = WaveState(waves[0].targets, waves[0].deadline, executing=True)
        elif operation == "finish" and waves:
            waves.pop(0)
        elif isinstance(operation, int):
            soulstone = stones[operation % len(stones)]
            index = pick_wave(waves, soulstone)
            holders = [i for i, w in enumerate(waves) if soulstone in w.targets]
            takers = [i for i, w in enumerate(waves)
                      if not w.executing and can_run_beside(soulstone, w.targets)]  # fmt: skip
            # A request rides with the wave that holds its soulstone, else joins
            # the first wave it can run beside, else forms a new one at the back.
            expected: list[int | None] = [*holders, *takers, None]
            assert index == expected[0]
            if index is None:
                waves.append(WaveState((soulstone,), deadline=0.0))
            elif soulstone not in waves[index].targets:
                joined = waves[index]
                waves[index] = WaveState((*joined.targets, soulstone), joined.deadline,
                                         executing=joined.executing)  # fmt: skip
    members = [s.id for w in waves for s in w.targets]
    assert len(members) == len(set(members)), "a soulstone waits in one wave only"
    running = data.draw(st.lists(st.sampled_from(stones), unique=True))
    for formed in waves:
        for i, first in enumerate(formed.targets):
            for second in formed.targets[i + 1 :]:
                assert not in_conflict(first, second), "conflicting soulstones share a wave"
        evicted = evictions(formed.targets, running)
        assert not evicted & {s.id for s in formed.targets}, "a wave evicts its own member"
        assert evicted <= {s.id for s in running}


@settings(max_examples=300, deadline=None)
@given(
    STONES,
    st.data(),
    st.floats(0, 30),
    st.none() | st.floats(0, 30),
)
def test_the_pump_never_cuts_off_requests_early(
    stones: list[Soulstone], data: st.DataObject, now: float, drain_deadline: float | None
) -> None:
    targets = tuple(data.draw(st.lists(st.sampled_from(stones), min_size=1, unique=True)))
    running = data.draw(st.lists(st.sampled_from(stones), unique=True))
    inflight = {s.id: data.draw(st.integers(0, 2)) for s in running}
    head = WaveState(targets, deadline=10.0, drain_deadline=drain_deadline)
    step = next_step([head], running, inflight, now, drain_timeout=5.0)
    evicted = evictions(targets, running)
    busy = any(inflight[i] for i in evicted)
    if isinstance(step, Execute):  # swap only once the evicted are idle or out of time
        assert step.evict == evicted
        assert not busy or (drain_deadline is not None and now >= drain_deadline)
    elif isinstance(step, Flow):  # flow only before the fairness deadline, never draining
        assert busy and now < head.deadline == step.until and drain_deadline is None
    else:  # drain: the evicted are busy, and the drain ends in the future (or now)
        assert isinstance(step, Drain)
        assert busy and step.evict == evicted and step.until >= now


def test_the_decisions_are_pure() -> None:
    tree = ast.parse(Path(queue.__file__).read_text(encoding="utf-8"))
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}  # fmt: skip
    imported |= {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    allowed = {"__future__", "collections.abc", "dataclasses"}
    assert all(name in allowed or name.startswith("soulstone.codex.") for name in imported), (
        imported
    )
