"""Declared personas and councils to one validated Councils value (pure).

Every problem comes at once, each naming file, table and field: names
declared twice, personas a council names but nobody declares, models that
nothing serves, rules that cannot work, quorums that cannot be met.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Sequence

from soulstone.codex.fields import did_you_mean
from soulstone.codex.models import Codex
from soulstone.council.models import Council, Councils, Persona, frozen_map
from soulstone.council.parse import Declared
from soulstone.errors import Problem


class _Checks:
    """Problems and warnings of the whole set of council files."""

    def __init__(self) -> None:
        self.problems: list[Problem] = []
        self.warnings: list[Problem] = []

    def error(self, file: str, table: str, field: str, message: str) -> None:
        self.problems.append(Problem(file, table, field, message))

    def warn(self, file: str, table: str, field: str, message: str) -> None:
        self.warnings.append(Problem(file, table, field, message))


def _listing(names: Collection[str]) -> str:
    return ", ".join(sorted(names)) or "none"


def _served_models(codex: Codex) -> list[str]:
    return sorted({model for s in codex.soulstones for model in s.models})


def _check_persona(
    persona: Persona, file: str, codex: Codex, adapters: Collection[str], out: _Checks
) -> None:
    if codex.serving(persona.model) is not None or persona.model in adapters:
        return
    served = _served_models(codex)
    hint = did_you_mean(persona.model, (*served, *adapters))
    out.error(
        file, f"persona.{persona.name}", "model",
        f"no soulstone serves {persona.model!r} and no LoRA adapter has that name{hint} "
        f"(served models: {_listing(served)}; adapters: {_listing(adapters)})",
    )  # fmt: skip


def _persona_ref(
    name: str, known: Collection[str], file: str, table: str, field: str, out: _Checks
) -> None:
    if name not in known:
        out.error(
            file, table, field,
            f"no persona named {name!r} is declared{did_you_mean(name, tuple(known))} "
            f"(declared: {_listing(known)})",
        )  # fmt: skip


def _check_rules(council: Council, file: str, out: _Checks) -> None:
    table = f"council.{council.name}.rules"
    for number, rule in enumerate(council.rules, start=1):
        try:
            re.compile(rule.match)
        except re.error as error:
            out.error(file, table, "match",
                      f"rule {number}: {rule.match!r} does not compile: {error}")  # fmt: skip
        if not rule.personas:
            out.error(file, table, "personas", f"rule {number}: the list is empty")
        for name in rule.personas:
            if name not in council.personas:
                out.error(
                    file, table, "personas",
                    f"rule {number}: {name!r} is not one of the council's personas "
                    f"({', '.join(council.personas)})",
                )  # fmt: skip


def _check_router(
    council: Council, file: str, known: Collection[str], broken: frozenset[str], out: _Checks
) -> None:
    table, router = f"council.{council.name}", council.router
    if router.persona is not None:
        _persona_ref(router.persona, known, file, table, "router.persona", out)
    if {"router", "router.kind", "rules"} & broken:
        return  # the kind or the rules are reported bad: what they would need is unknown
    if router.persona is not None and router.kind != "model":
        out.warn(file, table, "router.persona",
                 f"only router kind 'model' asks a persona; kind {router.kind!r} "
                 "ignores it")  # fmt: skip
    if router.kind == "model" and router.persona is None:
        out.error(file, table, "router.persona",
                  "router kind 'model' needs a persona that picks the personas")  # fmt: skip
    if router.kind == "rules" and not council.rules:
        out.error(file, table, "rules",
                  "router kind 'rules' needs rules: add [[council."
                  f"{council.name}.rules]] tables with match and personas")  # fmt: skip
    if council.rules and router.kind != "rules":
        out.warn(file, table, "rules",
                 f"rules are used only by router kind 'rules'; this router is "
                 f"{router.kind!r}")  # fmt: skip
    if router.max_personas is not None and router.kind == "all":
        out.warn(file, table, "router.max_personas",
                 "router kind 'all' calls every persona; max_personas caps only "
                 "'rules' and 'model' choices")  # fmt: skip


def _check_council(
    item: Declared, council: Council, known: Collection[str], codex: Codex | None, out: _Checks
) -> None:
    table, file, broken = item.table, item.file, item.broken
    if not council.personas and "personas" not in broken:
        out.error(file, table, "personas", "the list is empty: name the personas to ask")
    seen: set[str] = set()
    for name in council.personas:
        if name in seen:
            out.error(file, table, "personas", f"persona {name!r} is listed twice")
        seen.add(name)
        _persona_ref(name, known, file, table, "personas", out)
    if "aggregator" not in broken:
        _persona_ref(council.aggregator, known, file, table, "aggregator", out)
    if council.veto is not None:
        _persona_ref(council.veto, known, file, table, "veto", out)
    _check_router(council, file, known, broken, out)
    _check_rules(council, file, out)
    if council.quorum is not None and council.quorum > len(seen) and "personas" not in broken:
        out.error(file, table, "quorum",
                  f"{council.quorum} answers can never come from {len(seen)} "
                  f"persona{'s' if len(seen) != 1 else ''}")  # fmt: skip
    memory = council.memory
    if memory is not None and codex is not None and codex.serving(memory.embed_model) is None:
        out.error(file, table, "memory.embed_model",
                  f"no soulstone serves {memory.embed_model!r}"
                  f"{did_you_mean(memory.embed_model, tuple(_served_models(codex)))} "
                  f"(served models: {_listing(_served_models(codex))})")  # fmt: skip


def _first_of_each(declared: Sequence[Declared], out: _Checks) -> list[Declared]:
    """Each name once (the first declaration); later ones are reported."""
    first: dict[str, Declared] = {}
    for item in declared:
        earlier = first.setdefault(item.table, item)
        if earlier is not item:
            out.error(item.file, item.table, "",
                      f"the {item.kind} {item.name!r} is already declared in "
                      f"{earlier.file}")  # fmt: skip
    return list(first.values())


def resolve_councils(
    declared: Sequence[Declared], codex: Codex | None, adapters: Collection[str]
) -> tuple[Councils, tuple[Problem, ...], tuple[Problem, ...]]:
    """Check every declaration against each other, the codex and the adapters.

    `codex` None skips the model checks (the codex itself is invalid);
    `adapters` are the names of the registered LoRA adapters. Returns the
    usable councils, the problems and the warnings.
    """
    out = _Checks()
    unique = _first_of_each(declared, out)
    known = {d.name for d in unique if d.kind == "persona"}
    personas: dict[str, Persona] = {}
    councils: dict[str, Council] = {}
    files: dict[str, str] = {}
    for item in unique:
        files[item.table] = item.file
        if isinstance(item.value, Persona):
            personas[item.name] = item.value
            if codex is not None and "model" not in item.broken:
                _check_persona(item.value, item.file, codex, adapters, out)
        elif isinstance(item.value, Council):
            councils[item.name] = item.value
            _check_council(item, item.value, known, codex, out)
    result = Councils(
        personas=frozen_map(personas), councils=frozen_map(councils), files=frozen_map(files),
        warnings=tuple(sorted(out.warnings)),
    )  # fmt: skip
    return result, tuple(sorted(out.problems)), tuple(sorted(out.warnings))
