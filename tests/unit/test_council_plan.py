"""Waves (pure): conflicting soulstones never share one, fewest waves, what runs goes first."""

from __future__ import annotations

import pytest

from helpers import EXAMPLES, codex_of, load, stone
from soulstone.council.models import Persona
from soulstone.council.plan import Wave, persona_soulstones, plan_waves
from soulstone.errors import Refusal
from soulstone.lora.registry import AdapterRecord

CODEX = load(EXAMPLES)  # flash alone; logic.alpha + logic.beta; eye + scribe (vision-ritual)


def conflict_free(wave: Wave, conflicts: tuple[tuple[str, str], ...]) -> bool:
    ids = wave.soulstones
    return not any((a, b) in conflicts for a in ids for b in ids if a < b)


def persona(name: str, model: str) -> Persona:
    return Persona(name=name, model=model)


def adapter(name: str, base: str) -> AdapterRecord:
    return AdapterRecord(name, base, 4, 8.0, ("q_proj",), "tiny", {}, 0, created=0.0)


EVERYONE = [persona("sage", "alpha"), persona("seer", "eye"), persona("bolt", "flash"),
            persona("hand", "beta"), persona("scribe", "scribe")]  # fmt: skip


def test_conflicting_groups_go_to_separate_waves_one_per_group() -> None:
    waves = plan_waves(EVERYONE, CODEX, {})
    assert [(w.personas, w.soulstones) for w in waves] == [
        (("sage", "hand"), ("logic.alpha", "logic.beta")),
        (("seer", "scribe"), ("eye", "scribe")),
        (("bolt",), ("flash",)),
    ]
    assert waves[0].why == "logic.alpha, logic.beta may run at once: this wave goes first"
    assert waves[1].why == (
        "logic.alpha and eye cannot share the GPU (no shared group): eye, scribe wait for wave 1"
    )
    assert waves[2].why == (
        "eye and flash cannot share the GPU (flash is solitary): flash waits for wave 2"
    )
    assert waves[2].summary() == {"personas": ["bolt"], "soulstones": ["flash"],
                                  "why": waves[2].why}  # fmt: skip


def test_what_runs_goes_first_and_what_the_aggregator_needs_goes_last() -> None:
    waves = plan_waves(EVERYONE, CODEX, {}, running={"scribe"}, after=[persona("agg", "flash")])
    assert [w.soulstones for w in waves] == [
        ("eye", "scribe"), ("logic.alpha", "logic.beta"), ("flash",),
    ]  # fmt: skip
    assert waves[0].why == "scribe already runs: this wave goes first"
    last = plan_waves(EVERYONE, CODEX, {}, after=[persona("agg", "eye")])
    assert [w.soulstones[0] for w in last] == ["logic.alpha", "flash", "eye"]


def test_one_wave_when_nothing_conflicts() -> None:
    [wave] = plan_waves([persona("a", "eye"), persona("b", "scribe")], CODEX, {},
                        running={"eye", "scribe"})  # fmt: skip
    why = "eye, scribe may run at once: one wave, no swap (already running)"
    assert wave == Wave(("a", "b"), ("eye", "scribe"), why)
    assert plan_waves([], CODEX, {}) == []


def test_adapters_resolve_to_their_base_soulstone_and_batch_with_it() -> None:
    adapters = {"lilith": adapter("lilith", "logic.alpha"), "moth": adapter("moth", "flash")}
    personas = [persona("maat", "alpha"), persona("lilith", "lilith"), persona("moth", "moth")]
    assert {n: s.id for n, s in persona_soulstones(personas, CODEX, adapters).items()} == {
        "maat": "logic.alpha", "lilith": "logic.alpha", "moth": "flash",
    }  # fmt: skip
    waves = plan_waves(personas, CODEX, adapters)
    assert [(w.personas, w.soulstones) for w in waves] == [
        (("maat", "lilith"), ("logic.alpha",)), (("moth",), ("flash",)),
    ]  # fmt: skip


def test_a_model_nothing_serves_is_the_request_paths_404() -> None:
    with pytest.raises(Refusal) as caught:
        plan_waves([persona("ghost", "nope")], CODEX, {})
    assert (caught.value.status, caught.value.code) == (404, "MODEL_NOT_FOUND")


def test_fewest_waves_where_first_fit_would_take_three() -> None:
    # Conflicts form the path a - c - d - b: first fit in id order needs three
    # waves ({a, b}, {c}, {d}); two suffice ({a, d}, {b, c}).
    codex = codex_of(stone("a", "g1", "g2"), stone("b", "g1", "g3"), stone("c", "g3"),
                     stone("d", "g2"))  # fmt: skip
    personas = [persona(f"p{s}", s) for s in "abcd"]
    waves = plan_waves(personas, codex, {})
    assert sorted(w.soulstones for w in waves) == [("a", "d"), ("b", "c")]
    assert all(conflict_free(w, codex.conflicts) for w in waves)


def test_running_soulstones_stay_together_when_the_count_allows() -> None:
    # Both {a, b} + {c, d} and {a, d} + {b, c} take two waves; b and c run now.
    codex = codex_of(stone("a", "g1", "g2"), stone("b", "g1", "g3"), stone("c", "g3"),
                     stone("d", "g2"))  # fmt: skip
    waves = plan_waves([persona(f"p{s}", s) for s in "abcd"], codex, {}, running={"b", "c"})
    assert waves[0].soulstones == ("b", "c")
    assert waves[0].why == "b, c already run: this wave goes first"


@pytest.mark.parametrize("size", [4, 9, 14])
def test_every_wave_is_conflict_free_and_every_persona_planned_once(size: int) -> None:
    # Three groups plus solitary soulstones: each group is one wave, each solitary one too.
    stones = [stone(f"s{i:02d}", *([f"g{i % 3}"] if i % 4 else [])) for i in range(size)]
    codex = codex_of(*stones)
    personas = [persona(f"p{i}", f"s{i:02d}") for i in range(size)]
    waves = plan_waves(personas, codex, {})
    groups = {s.groups for s in stones if s.groups}
    solitary = sum(1 for s in stones if not s.groups)
    assert len(waves) == len(groups) + solitary
    assert all(conflict_free(w, codex.conflicts) for w in waves)
    assert sorted(p for w in waves for p in w.personas) == sorted(p.name for p in personas)
