"""Council TOML text to typed personas and councils, with every problem found (pure).

A file holds `[persona.NAME]` and `[council.NAME]` tables (and
`[[council.NAME.rules]]`); both kinds may share a file. Type errors name the
file, the table and the field, and the rest of the table is still checked.
"""

from __future__ import annotations

import tomllib
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ValidationError

from soulstone.codex.fields import describe, did_you_mean
from soulstone.codex.parse import NAME_RULE, valid_name
from soulstone.council.models import Council, Persona, Rule
from soulstone.errors import Problem

Kind = Literal["persona", "council"]
KINDS: tuple[Kind, ...] = ("persona", "council")
ROUTER_KINDS = ("all", "rules", "model")

PERSONA_EXPECTED: dict[str, str] = {
    "model": "a string: a served model name or a LoRA adapter name",
    "system": "a string (the system prompt)",
    "tags": "a list of strings",
    "description": "a string",
    "temperature": "a number from 0 to 2",
    "top_p": "a number above 0, at most 1",
    "max_tokens": "a positive integer",
    "seed": "an integer",
    "stop": "a string or a list of strings",
    "presence_penalty": "a number from -2 to 2",
    "frequency_penalty": "a number from -2 to 2",
}
COUNCIL_EXPECTED: dict[str, str] = {
    "personas": "a list of persona names",
    "aggregator": "a persona name (a string)",
    "router": 'a table (kind, persona, max_personas) or one of "all", "rules", "model"',
    "router.kind": '"all", "rules" or "model"',
    "router.persona": "a persona name (a string)",
    "router.max_personas": "a positive integer",
    "rules": "an array of tables [[council.NAME.rules]] with match and personas",
    "anonymous": "true or false",
    "veto": "a persona name (a string)",
    "max_rounds": "a positive integer (rounds, at least 1)",
    "quorum": "a positive integer (answers needed)",
    "timeout_s": "a positive number of seconds",
    "memory": "false, or a table (embed_model, top_k)",
    "memory.embed_model": "a served model name (a string)",
    "memory.top_k": "a positive integer",
    "description": "a string",
}
RULE_EXPECTED: dict[str, str] = {
    "match": "a regular expression (a string)",
    "personas": "a list of persona names",
}
SUBTABLES: dict[str, frozenset[str]] = {
    "router": frozenset({"kind", "persona", "max_personas"}),
    "memory": frozenset({"embed_model", "top_k"}),
}
MISSING: dict[str, str] = {
    "model": "required: the model this persona asks (a served model or a LoRA adapter)",
    "personas": "required: the personas this council asks",
    "aggregator": "required: the persona that merges the answers into the final one",
    "memory.embed_model": "required: the served model that embeds the answers",
    "match": "required: a regular expression over the last user message",
}


@dataclass(frozen=True)
class Declared:
    """One persona or council as declared: its file and typed value.

    A field that was bad or missing is named in `broken` and holds a
    placeholder, so the other fields are still checked; such a value never
    leaves validation, which has problems to report then.
    """

    file: str
    kind: Kind
    name: str
    value: Persona | Council | None
    broken: frozenset[str] = frozenset()  # fields reported bad or missing (placeholders)

    @property
    def table(self) -> str:
        """The table's dotted name as written: `persona.maat`."""
        return f"{self.kind}.{self.name}"


class _Report:
    """The problems of one table."""

    def __init__(self, file: str, table: str) -> None:
        self.file = file
        self.table = table
        self.problems: list[Problem] = []

    def error(self, field: str, message: str) -> None:
        self.problems.append(Problem(self.file, self.table, field, message))


def _offending(body: dict[str, Any], loc: list[str | int]) -> Any:
    """The value a validation error points at: the field, its item, or its sub-key."""
    value = body.get(str(loc[0]))
    if len(loc) > 1 and (isinstance(loc[1], int) or loc[0] in SUBTABLES):
        try:
            return value[loc[1]]  # type: ignore[index]
        except (KeyError, IndexError, TypeError):
            return value
    return value


def _typed(
    model: type[BaseModel], body: dict[str, Any], expected: dict[str, str], out: _Report,
    prefix: str = "", placeholders: dict[str, Any] | None = None,
) -> tuple[BaseModel | None, frozenset[str]]:  # fmt: skip
    """Validate a table; report each bad field once, then validate what is left.

    Required fields that were bad or missing take their `placeholders`
    value; returns the value (None when a required field has none) and the
    fields reported.
    """
    try:
        return model.model_validate(body), frozenset()
    except ValidationError as error:
        found: dict[str, str] = {}
        for detail in error.errors():
            loc = [part for part in detail["loc"] if isinstance(part, str | int)]
            top = str(loc[0]) if loc else ""
            field = top
            if top in SUBTABLES and len(loc) > 1 and isinstance(loc[1], str):
                field = f"{top}.{loc[1]}"
            if field in found or not field:
                continue
            if detail["type"] == "missing":
                found[field] = MISSING.get(field, "required")
                continue
            where = f"item {loc[1] + 1}: " if len(loc) > 1 and isinstance(loc[1], int) else ""
            value = _offending(body, loc)
            what = expected.get(field, detail["msg"])
            found[field] = f"{where}expected {what}, got {describe(value)}"
        for field, message in found.items():
            out.error(field, prefix + message)
        rest = _without(body, found)
        broken = frozenset(found)
        for key, placeholder in (placeholders or {}).items():
            if key in broken:
                rest[key] = placeholder
        try:
            return model.model_validate(rest), broken
        except ValidationError:
            pass  # a sub-table lost a required field: leave the whole sub-table out
        rest = {k: v for k, v in rest.items() if k not in {f.split(".")[0] for f in broken}}
        rest |= {k: v for k, v in (placeholders or {}).items() if k in broken}
        try:
            return model.model_validate(rest), broken
        except ValidationError:
            return None, broken  # reported above


def _without(body: dict[str, Any], bad: Collection[str]) -> dict[str, Any]:
    """The table without its bad fields; a bad sub-field leaves the rest of its table."""
    rest = {key: value for key, value in body.items() if key not in bad}
    for field in bad:
        top, _, sub = field.partition(".")
        if sub and isinstance(rest.get(top), dict):
            rest[top] = {k: v for k, v in rest[top].items() if k != sub}
    return rest


def _unknown(
    body: dict[str, Any], allowed: frozenset[str], out: _Report, prefix: str = ""
) -> dict[str, Any]:
    """Report keys the schema does not know (with a close match); return the rest."""
    known: dict[str, Any] = {}
    for key, value in body.items():
        if key not in allowed:
            out.error(key, f"{prefix}unknown key {key!r}{did_you_mean(key, allowed)}")
            continue
        inner = SUBTABLES.get(key)
        if inner is not None and isinstance(value, dict):
            for sub in [s for s in value if s not in inner]:
                out.error(f"{key}.{sub}", f"unknown key {sub!r}{did_you_mean(sub, inner)}")
            value = {s: v for s, v in value.items() if s in inner}
        known[key] = value
    return known


def _persona(file: str, name: str, body: dict[str, Any]) -> tuple[Declared, list[Problem]]:
    out = _Report(file, f"persona.{name}")
    if "name" in body:
        out.error("name", f"a persona's name is its table's: [persona.{name}] is {name!r}")
        body = {k: v for k, v in body.items() if k != "name"}
    known = _unknown(body, frozenset(PERSONA_EXPECTED), out)
    typed, broken = _typed(Persona, {"name": name, **known}, PERSONA_EXPECTED, out,
                           placeholders={"model": ""})  # fmt: skip
    value = typed if isinstance(typed, Persona) else None
    return Declared(file, "persona", name, value, broken), out.problems


def _rules(file: str, name: str, raw: Any, out: _Report) -> list[Rule] | None:
    if not isinstance(raw, list) or not all(isinstance(r, dict) for r in raw):
        out.error("rules", f"expected {COUNCIL_EXPECTED['rules']}, got {describe(raw)}")
        return None
    rules_out = _Report(file, f"council.{name}.rules")
    rules: list[Rule] = []
    for number, body in enumerate(raw, start=1):
        prefix = f"rule {number}: "
        known = _unknown(body, frozenset(RULE_EXPECTED), rules_out, prefix)
        rule, _ = _typed(Rule, known, RULE_EXPECTED, rules_out, prefix)
        if isinstance(rule, Rule):
            rules.append(rule)
    out.problems += rules_out.problems
    return rules


def _memory(raw: Any, out: _Report) -> tuple[bool, Any]:
    """Whether `memory` stays in the table, and its value (false: off, left out)."""
    if raw is False:
        return False, None
    if raw is True:
        out.error(
            "memory",
            "memory = true does not say which model embeds the answers: write "
            'memory = { embed_model = "NAME", top_k = 4 } (or false to keep it off)',
        )
        return False, None
    return True, raw


def _council(file: str, name: str, body: dict[str, Any]) -> tuple[Declared, list[Problem]]:
    out = _Report(file, f"council.{name}")
    if "name" in body:
        out.error("name", f"a council's name is its table's: [council.{name}] is {name!r}")
        body = {k: v for k, v in body.items() if k != "name"}
    known = _unknown(body, frozenset(k for k in COUNCIL_EXPECTED if "." not in k), out)
    if isinstance(known.get("router"), str):
        known["router"] = {"kind": known["router"]}  # `router = "rules"` is short for the table
    if "memory" in known:
        keep, value = _memory(known.pop("memory"), out)
        if keep:
            known["memory"] = value
    gone: set[str] = set()
    if "rules" in known:
        rules = _rules(file, name, known.pop("rules"), out)
        if rules is None:
            gone.add("rules")
        else:
            known["rules"] = rules
    typed, broken = _typed(Council, {"name": name, **known}, COUNCIL_EXPECTED, out,
                           placeholders={"personas": (), "aggregator": ""})  # fmt: skip
    value = typed if isinstance(typed, Council) else None
    return Declared(file, "council", name, value, broken | gone), out.problems


def _kind_tables(file: str, kind: Kind, value: Any) -> tuple[list[Declared], list[Problem]]:
    if not isinstance(value, dict):
        return [], [Problem(file, "", kind, f"{kind} must hold tables: declare [{kind}.NAME]")]
    declared: list[Declared] = []
    problems: list[Problem] = []
    for name, body in value.items():
        table = f"{kind}.{name}"
        if not isinstance(body, dict):
            problems.append(
                Problem(file, kind, name, f"expected a table [{table}], got {describe(body)}")
            )
            continue
        if not valid_name(name):
            problems.append(
                Problem(file, table, "", f"malformed name {name!r}: use {NAME_RULE} characters")
            )
        item, found = (_persona if kind == "persona" else _council)(file, name, body)
        declared.append(item)
        problems += found
    return declared, problems


def parse_councils(text: str, file: str) -> tuple[list[Declared], list[Problem]]:
    """Parse one council file's text into declared personas and councils, and the problems."""
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        return [], [Problem(file, "", "", f"invalid TOML: {error}")]
    declared: list[Declared] = []
    problems: list[Problem] = []
    for key, value in document.items():
        if key not in KINDS:
            hint = did_you_mean(key, KINDS) or " (declare [persona.NAME] or [council.NAME])"
            problems.append(Problem(file, "", key, f"unknown table {key!r}{hint}"))
            continue
        found, found_problems = _kind_tables(file, key, value)
        declared += found
        problems += found_problems
    return declared, problems
