"""TOML text to soulstone declarations, by the two-dot rule."""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from typing import Any

from soulstone.codex.models import SUBTABLE_FIELDS
from soulstone.errors import Problem

NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,62}")
NAME_RULE = "letters, digits, '-' and '_', starting with a letter or digit, at most 63"


@dataclass(frozen=True)
class Declaration:
    """One soulstone table found in a file, with the group its position implies."""

    file: str
    id: str
    group: str | None
    table: dict[str, Any]


def valid_name(name: str) -> bool:
    """True when a soulstone or group name is well formed."""
    return NAME_RE.fullmatch(name) is not None


def _looks_like_soulstone(table: dict[str, Any]) -> bool:
    # A soulstone table holds plain values (or its own sub-tables such as
    # `health`); a group table holds only soulstone tables.
    if not table:
        return True
    return any(not isinstance(v, dict) or k in SUBTABLE_FIELDS for k, v in table.items())


def _name_problems(file: str, table: str, names: list[str]) -> list[Problem]:
    return [
        Problem(file, table, "", f"malformed name {name!r}: use {NAME_RULE} characters")
        for name in names
        if not valid_name(name)
    ]


def parse_text(text: str, file: str) -> tuple[list[Declaration], list[Problem]]:
    """Parse one codex file's text into declarations and the problems found."""
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        return [], [Problem(file, "", "", f"invalid TOML: {error}")]
    declarations: list[Declaration] = []
    problems: list[Problem] = []
    for key, value in document.items():
        if not isinstance(value, dict):
            problems.append(
                Problem(
                    file,
                    "",
                    key,
                    "a top-level key must be a table: declare soulstones as [name] or [group.name]",
                )
            )
            continue
        if _looks_like_soulstone(value):
            problems += _name_problems(file, key, [key])
            declarations.append(Declaration(file, key, None, value))
            continue
        problems += _name_problems(file, key, [key])
        for name, member in value.items():
            table_id = f"{key}.{name}"
            if not isinstance(member, dict):
                problems.append(
                    Problem(file, key, name, "a group table may hold only soulstone tables")
                )
                continue
            problems += _name_problems(file, table_id, [name])
            declarations.append(Declaration(file, table_id, key, member))
    return declarations, problems
