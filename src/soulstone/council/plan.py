"""Waves (pure): which personas can be asked at once, and in what order, with fewest swaps.

Each persona resolves to the soulstone that serves its model (an adapter to
the soulstone of its base model, as the request path routes it). Soulstones
that conflict cannot run at once, so their personas go to different waves:
one wave per set of mutually compatible soulstones, as few waves as
possible, the wave holding what already runs first, no wave twice.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

from soulstone.codex.conflicts import in_conflict
from soulstone.codex.models import Codex, Soulstone
from soulstone.council.models import Persona
from soulstone.dispatch.prepare import route
from soulstone.lora.registry import AdapterRecord

SEARCH_STEPS = 20_000  # exact search up to this many steps, then the best found so far


@dataclass(frozen=True)
class Wave:
    """Personas asked at once, the soulstones that serve them, and why the wave is there."""

    personas: tuple[str, ...]
    soulstones: tuple[str, ...]
    why: str

    def summary(self) -> dict[str, object]:
        """The `council plan --json` record of this wave."""
        return {"personas": list(self.personas), "soulstones": list(self.soulstones),
                "why": self.why}  # fmt: skip


def persona_soulstones(
    personas: Sequence[Persona], codex: Codex, adapters: Mapping[str, AdapterRecord]
) -> dict[str, Soulstone]:
    """Each persona's soulstone, routed as a request for its model would be.

    Raises the request path's Refusal (404 MODEL_NOT_FOUND) for a model that
    neither a soulstone nor an adapter serves.
    """
    routes = {model: s for s in codex.soulstones for model in s.models}
    return {p.name: route({"model": p.model}, routes, adapters, codex)[1] for p in personas}


def _compatible(wave: list[Soulstone], stone: Soulstone) -> bool:
    return not any(in_conflict(other, stone) for other in wave)


Partition = list[list[Soulstone]]


def _score(partition: Partition, running: Collection[str]) -> tuple[int, int]:
    together = max((sum(s.id in running for s in wave) for wave in partition), default=0)
    return len(partition), -together


def _greedy(stones: Sequence[Soulstone]) -> Partition:
    waves: Partition = []
    for stone in stones:
        home = next((wave for wave in waves if _compatible(wave, stone)), None)
        if home is None:
            waves.append([stone])
        else:
            home.append(stone)
    return waves


def _fewest_waves(stones: Sequence[Soulstone], running: Collection[str]) -> Partition:
    """A partition into compatible sets: fewest sets, then most running ones together."""
    best = _greedy(stones)
    best_score = _score(best, running)
    steps = 0

    def place(index: int, waves: Partition) -> None:
        nonlocal best, best_score, steps
        steps += 1
        if steps > SEARCH_STEPS or len(waves) > best_score[0]:
            return
        if index == len(stones):
            score = _score(waves, running)
            if score < best_score:
                best, best_score = [list(w) for w in waves], score
            return
        stone = stones[index]
        for wave in waves:
            if _compatible(wave, stone):
                wave.append(stone)
                place(index + 1, waves)
                wave.pop()
        waves.append([stone])
        place(index + 1, waves)
        waves.pop()

    place(0, [])
    return best


def _why_not_together(a: Soulstone, b: Soulstone) -> str:
    if not b.groups:
        return f"{b.id} is solitary"
    if not a.groups:
        return f"{a.id} is solitary"
    return "no shared group"


def _why(number: int, wave: list[Soulstone], earlier: Partition, running: Collection[str],
         single: bool) -> str:  # fmt: skip
    names = ", ".join(s.id for s in wave)
    verb = "waits" if len(wave) == 1 else "wait"
    live = [s.id for s in wave if s.id in running]
    if single:
        return f"{names} may run at once: one wave, no swap" + (
            " (already running)" if len(live) == len(wave) else "")  # fmt: skip
    if number == 1:
        if live:
            runs = "runs" if len(live) == 1 else "run"
            return f"{', '.join(live)} already {runs}: this wave goes first"
        return f"{names} may run at once: this wave goes first"
    for back in range(len(earlier) - 1, -1, -1):
        for a in earlier[back]:
            for b in wave:
                if in_conflict(a, b):
                    return (f"{a.id} and {b.id} cannot share the GPU ({_why_not_together(a, b)}):"
                            f" {names} {verb} for wave {back + 1}")  # fmt: skip
    return f"{names} may run at once: wave {number}"


def plan_waves(
    personas: Sequence[Persona], codex: Codex, adapters: Mapping[str, AdapterRecord],
    running: Collection[str] = (), after: Sequence[Persona] = (),
) -> list[Wave]:  # fmt: skip
    """The waves that ask these personas with the fewest swaps.

    `running` holds the ids of the soulstones running now: the wave holding
    them goes first. `after` are personas asked once the waves are done, in
    order (the aggregator, then the veto): the wave the first of them can run
    beside goes last, so it needs no swap of its own, and so on down the
    list. Raises the request path's Refusal for a persona whose model
    nothing serves.
    """
    if not personas:
        return []
    served = persona_soulstones(personas, codex, adapters)
    then = list(persona_soulstones(after, codex, adapters).values())
    by_id = {s.id: s for s in served.values()}
    stones = sorted(by_id.values(), key=lambda s: (s.id not in running, s.id))
    partition = _fewest_waves(stones, running)
    position = {p.name: i for i, p in enumerate(personas)}

    def order(wave: list[Soulstone]) -> tuple[int, tuple[bool, ...], int]:
        live = sum(s.id in running for s in wave)
        beside_after = tuple(_compatible(wave, s) for s in then)
        ids = {s.id for s in wave}
        first = min(position[n] for n, s in served.items() if s.id in ids)
        return -live, beside_after, first

    partition = sorted((sorted(w, key=lambda s: s.id) for w in partition), key=order)
    waves: list[Wave] = []
    for number, wave in enumerate(partition, start=1):
        ids = {s.id for s in wave}
        names = tuple(p.name for p in personas if served[p.name].id in ids)
        why = _why(number, wave, partition[: number - 1], running, len(partition) == 1)
        waves.append(Wave(names, tuple(s.id for s in wave), why))
    return waves
