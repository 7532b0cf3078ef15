"""Pure decisions: what a name means, and what to stop and start to manifest it."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import Literal

from soulstone.codex.conflicts import in_conflict
from soulstone.codex.models import Codex, Soulstone
from soulstone.errors import UsageError

TargetKind = Literal["soulstone", "group", "capability"]


@dataclass(frozen=True)
class Target:
    """What the user asked for: a soulstone id, a group name or a capability tag."""

    kind: TargetKind
    name: str

    def __str__(self) -> str:
        return f"capability {self.name}" if self.kind == "capability" else self.name


@dataclass(frozen=True)
class Stop:
    """A running soulstone to stop, and why."""

    soulstone: Soulstone
    reason: str


@dataclass(frozen=True)
class Plan:
    """The stops and starts that manifest a target set (already-running targets stay)."""

    targets: tuple[Soulstone, ...]
    stop: tuple[Stop, ...]
    start: tuple[Soulstone, ...]

    @property
    def noop(self) -> bool:
        """True when everything asked for already runs and nothing must stop."""
        return not self.stop and not self.start


def name_target(codex: Codex, name: str) -> Target:
    """A NAME from the command line: a soulstone id, else a group; UsageError otherwise."""
    if codex.get(name) is not None:
        return Target("soulstone", name)
    if name in codex.groups():
        return Target("group", name)
    known = ", ".join([s.id for s in codex.soulstones] + list(codex.groups()))
    raise UsageError(f"no soulstone or group named {name!r} (known: {known})")


def _group_sets(codex: Codex, capability: str) -> list[tuple[Soulstone, ...]]:
    sets: dict[tuple[str, ...], tuple[Soulstone, ...]] = {}
    groups = codex.groups()
    for soulstone in codex.soulstones:
        if capability not in soulstone.capabilities:
            continue
        if not soulstone.groups:
            sets[(soulstone.id,)] = (soulstone,)
        for group in soulstone.groups:
            members = tuple(s for s in codex.soulstones if s.id in groups[group])
            sets[tuple(s.id for s in members)] = members
    return list(sets.values())


def resolve(codex: Codex, target: Target, running: Collection[str]) -> tuple[Soulstone, ...]:
    """The soulstones a target stands for.

    A capability picks the group (or solitary soulstone) that provides it,
    preferring one that already runs, then one that needs the fewest
    starts, then the fewest stops, then the first by name.
    """
    if target.kind == "soulstone":
        found = codex.get(target.name)
        if found is None:
            raise UsageError(f"no soulstone named {target.name!r}")
        return (found,)
    if target.kind == "group":
        members = codex.groups().get(target.name)
        if members is None:
            raise UsageError(f"no group named {target.name!r}")
        return tuple(s for s in codex.soulstones if s.id in members)
    options = _group_sets(codex, target.name)
    if not options:
        raise UsageError(f"no soulstone has the capability {target.name!r}")
    live = [s for s in codex.soulstones if s.id in running]

    def cost(option: tuple[Soulstone, ...]) -> tuple[int, int, tuple[str, ...]]:
        starts = sum(1 for s in option if s.id not in running)
        stops = sum(1 for r in live if any(in_conflict(r, s) for s in option))
        return starts, stops, tuple(s.id for s in option)

    return min(options, key=cost)


def _reason(stopping: Soulstone, targets: tuple[Soulstone, ...]) -> str:
    culprit = next(t for t in targets if in_conflict(stopping, t))
    if not culprit.groups:
        why = f"{culprit.id} is solitary"
    elif not stopping.groups:
        why = f"{stopping.id} is solitary"
    else:
        why = "no shared group"
    return f"{culprit.id} conflicts with {stopping.id}: {why}"


def make_plan(targets: tuple[Soulstone, ...], running: Collection[Soulstone]) -> Plan:
    """Stop every running soulstone that conflicts with a target; start the targets not running."""
    running_ids = {s.id for s in running}
    stops = tuple(
        Stop(s, _reason(s, targets))
        for s in sorted(running, key=lambda s: s.id)
        if any(in_conflict(s, t) for t in targets)
    )
    starts = tuple(t for t in targets if t.id not in running_ids)
    return Plan(targets, stops, starts)
