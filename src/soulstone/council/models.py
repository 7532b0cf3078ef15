"""Typed council values (pure): personas, routers, rules, memory, councils.

Each model is frozen and refuses unknown keys, like the codex's declarations.
A persona's and a council's name come from their table (`[persona.NAME]`,
`[council.NAME]`), never from a key inside it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Annotated, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, Strict

from soulstone.errors import Problem

V = TypeVar("V")
RouterKind = Literal["all", "rules", "model"]

PositiveInt = Annotated[int, Field(ge=1)]
PositiveSeconds = Annotated[float, Field(gt=0)]
# TOML arrays arrive as lists; they are kept as tuples (the items stay strictly typed).
Names = Annotated[tuple[str, ...], Strict(False)]

# The OpenAI sampling fields a persona may set, in the order they are merged.
SAMPLING_FIELDS: tuple[str, ...] = (
    "temperature",
    "top_p",
    "max_tokens",
    "seed",
    "stop",
    "presence_penalty",
    "frequency_penalty",
)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class Persona(_Strict):
    """One persona: the model (a served name or a LoRA adapter) and how it is asked."""

    name: str
    model: str
    system: str = ""
    tags: Names = ()
    description: str = ""
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    top_p: Annotated[float, Field(gt=0, le=1)] | None = None
    max_tokens: PositiveInt | None = None
    seed: int | None = None
    stop: str | Names | None = None
    presence_penalty: Annotated[float, Field(ge=-2, le=2)] | None = None
    frequency_penalty: Annotated[float, Field(ge=-2, le=2)] | None = None

    def sampling(self) -> dict[str, object]:
        """The sampling fields this persona sets, ready to merge into a chat-completions body.

        Fields left out are absent (the engine's defaults apply); `stop` is a
        string or a list of strings, as OpenAI takes it.
        """
        found: dict[str, object] = {}
        for name in SAMPLING_FIELDS:
            value = getattr(self, name)
            if value is not None:
                found[name] = list(value) if isinstance(value, tuple) else value
        return found


class Rule(_Strict):
    """A `rules` router's rule: a regular expression over the last user message."""

    match: str
    personas: Names

    def pattern(self) -> re.Pattern[str]:
        """The compiled expression (validation has checked that it compiles)."""
        return re.compile(self.match)


class Router(_Strict):
    """How a council picks its personas: every one, by rules, or by a router persona."""

    kind: RouterKind = "all"
    persona: str | None = None
    max_personas: PositiveInt | None = None


class Memory(_Strict):
    """Resonance memory: the model that embeds the answers, and how many to recall."""

    embed_model: str
    top_k: PositiveInt = 4


class Council(_Strict):
    """A council: its personas, router, aggregator, optional veto and limits."""

    name: str
    personas: Names
    aggregator: str
    router: Router = Router()
    rules: Annotated[tuple[Rule, ...], Strict(False)] = ()
    anonymous: bool = False
    veto: str | None = None
    max_rounds: PositiveInt = 2
    quorum: PositiveInt | None = None
    timeout_s: PositiveSeconds = 60.0
    memory: Memory | None = None
    description: str = ""

    @property
    def effective_quorum(self) -> int:
        """Answers needed when every persona is called: `quorum`, else a majority."""
        return self.quorum_for(len(self.personas))

    def quorum_for(self, called: int) -> int:
        """Answers needed when `called` personas were routed to.

        A majority of them by default; an explicit `quorum` is capped at the
        number called, so a router that picks fewer personas can still succeed.
        """
        if self.quorum is None:
            return called // 2 + 1 if called else 0
        return min(self.quorum, called)

    def roles(self) -> tuple[str, ...]:
        """Every persona this council names: members, then router, aggregator and veto."""
        named = [*self.personas, self.router.persona, self.aggregator, self.veto]
        return tuple(dict.fromkeys(n for n in named if n is not None))


def frozen_map(mapping: Mapping[str, V]) -> Mapping[str, V]:
    """A read-only copy of a mapping, sorted by key."""
    return MappingProxyType(dict(sorted(mapping.items())))


@dataclass(frozen=True)
class Councils:
    """Every declared persona and council, by name, and the file each came from."""

    personas: Mapping[str, Persona] = field(default_factory=lambda: MappingProxyType({}))
    councils: Mapping[str, Council] = field(default_factory=lambda: MappingProxyType({}))
    files: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    warnings: tuple[Problem, ...] = ()

    def persona(self, name: str) -> Persona | None:
        """The persona of this name, or None."""
        return self.personas.get(name)

    def council(self, name: str) -> Council | None:
        """The council of this name, or None."""
        return self.councils.get(name)

    def members(self, council: Council) -> tuple[Persona, ...]:
        """The council's own personas (not its router, aggregator or veto), in order."""
        return tuple(self.personas[name] for name in council.personas)

    def file_of(self, table: str) -> str:
        """The file that declared a table (`persona.maat`, `council.pantheon`), or ''."""
        return self.files.get(table, "")

    def summary(self) -> dict[str, object]:
        """The `council list --json` document: every council with its roles and settings."""
        return {"councils": [council_summary(c, self.file_of(f"council.{c.name}"))
                             for _, c in sorted(self.councils.items())]}  # fmt: skip


def council_summary(council: Council, file: str) -> dict[str, object]:
    """One council's `council list --json` record."""
    memory = council.memory
    return {
        "name": council.name,
        "file": file,
        "personas": list(council.personas),
        "router": {
            "kind": council.router.kind,
            "persona": council.router.persona,
            "max_personas": council.router.max_personas,
            "rules": [{"match": r.match, "personas": list(r.personas)} for r in council.rules],
        },
        "aggregator": council.aggregator,
        "veto": council.veto,
        "anonymous": council.anonymous,
        "max_rounds": council.max_rounds,
        "quorum": council.effective_quorum,
        "timeout_s": council.timeout_s,
        "memory": None if memory is None else {"embed_model": memory.embed_model,
                                                "top_k": memory.top_k},
    }  # fmt: skip
