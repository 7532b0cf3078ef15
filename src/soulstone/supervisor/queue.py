"""Serve group by group: the wave decisions, as pure functions over frozen values.

The scheduler (`supervisor/schedule.py`) keeps the queue of waves and acts;
everything it decides comes from here, with the time passed in:

- `pick_wave`: which queued wave a request for a soulstone joins (or a new one);
- `evictions`: which running soulstones a wave's soulstones push out;
- `next_step`: what the pump does next for the wave at the head of the queue
  (`Flow`, `Drain`, `Execute`, or `Rest` when no wave waits).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from soulstone.codex.conflicts import in_conflict
from soulstone.codex.models import Soulstone


@dataclass(frozen=True)
class WaveState:
    """A queued wave as the decisions see it.

    `deadline` is the fairness deadline (`max_wait` after the wave formed);
    `drain_deadline` is None until draining began, then when it ends;
    `executing` is True once its swap is under way (it takes no new members).
    """

    targets: tuple[Soulstone, ...]
    deadline: float
    drain_deadline: float | None = None
    executing: bool = False


@dataclass(frozen=True)
class Flow:
    """The soulstones the head wave evicts still serve requests: let them, until `until`."""

    until: float


@dataclass(frozen=True)
class Drain:
    """Close `evict` to new requests; those in flight may finish until `until`."""

    until: float
    evict: frozenset[str]


@dataclass(frozen=True)
class Execute:
    """Swap now: stop `evict` and bring up the head wave's soulstones."""

    evict: frozenset[str]


@dataclass(frozen=True)
class Rest:
    """No wave waits: nothing to do."""


Step = Flow | Drain | Execute | Rest


def joins(wave: WaveState, soulstone: Soulstone) -> bool:
    """True when a request for this soulstone may join this wave.

    It may when the wave already holds the soulstone, or when the wave is not
    yet executing and the soulstone can run beside every one of its members.
    """
    if any(t.id == soulstone.id for t in wave.targets):
        return True
    return not wave.executing and not any(in_conflict(soulstone, t) for t in wave.targets)


def pick_wave(waves: Sequence[WaveState], soulstone: Soulstone) -> int | None:
    """Index of the first wave a request for this soulstone joins; None: a new wave at the back."""
    for index, wave in enumerate(waves):
        if joins(wave, soulstone):
            return index
    return None


def evictions(targets: Iterable[Soulstone], running: Iterable[Soulstone]) -> frozenset[str]:
    """Ids of the running soulstones that conflict with any of the targets."""
    wanted = tuple(targets)
    return frozenset(r.id for r in running if any(in_conflict(r, t) for t in wanted))


def next_step(
    waves: Sequence[WaveState],
    running: Iterable[Soulstone],
    inflight: Mapping[str, int],
    now: float,
    drain_timeout: float,
) -> Step:
    """What the pump does next for the head wave, at time `now`.

    - no wave: `Rest`;
    - nothing the wave evicts has a request in flight: `Execute`;
    - before the wave's fairness deadline: `Flow` until that deadline;
    - past it, draining not begun: `Drain` until `now + drain_timeout`;
    - draining, before its deadline: `Drain` until that deadline;
    - draining, past its deadline: `Execute` (what still runs is cut off).

    The evictions are counted afresh at every step, so a soulstone that joins
    the wave late drains what it conflicts with too.
    """
    if not waves:
        return Rest()
    head = waves[0]
    evict = evictions(head.targets, running)
    if not any(inflight.get(soulstone_id, 0) > 0 for soulstone_id in evict):
        return Execute(evict)
    if head.drain_deadline is None:
        if now < head.deadline:
            return Flow(head.deadline)
        return Drain(now + drain_timeout, evict)
    if now < head.drain_deadline:
        return Drain(head.drain_deadline, evict)
    return Execute(evict)
