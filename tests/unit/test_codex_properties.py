"""Properties of the codex over random inputs (hypothesis)."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helpers import NO_PODMAN, PODMAN_HOST
from soulstone.codex.conflicts import in_conflict
from soulstone.codex.facts import HostFacts
from soulstone.codex.load import load_codex
from soulstone.codex.models import FIELD_NAMES, Codex
from soulstone.errors import CodexError

NAMES = st.sampled_from(["a", "b", "c", "d", "e", "f", "red-x", "x_1"])
GROUPS = st.sampled_from(["g1", "g2", "g3", "vision-ritual"])
SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def toml_value(value: Any) -> str:
    """Serialise a value as TOML (strings through JSON escapes, tables inline)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float | str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    assert isinstance(value, dict)
    return "{" + ", ".join(f"{json.dumps(k)} = {toml_value(v)}" for k, v in value.items()) + "}"


def toml_document(tables: dict[str, dict[str, Any]]) -> str:
    """One `[dotted.header]` per table, keys as `key = value` lines."""
    lines = []
    for header, table in tables.items():
        lines.append(f"[{header}]")
        lines += [f"{json.dumps(k)} = {toml_value(v)}" for k, v in table.items()]
    return "\n".join(lines) + "\n"


@st.composite
def valid_codexes(draw: st.DrawFn) -> dict[str, str]:
    """A few files of well-formed soulstones with unique ids, ports and models."""
    count = draw(st.integers(1, 7))
    ids: list[str] = []
    files: dict[str, dict[str, dict[str, Any]]] = {}
    for number in range(count):
        name = draw(NAMES)
        group = draw(st.none() | GROUPS)
        soulstone_id = f"{group}.{name}" if group else name
        unit = soulstone_id.replace(".", "-")
        if any(existing.replace(".", "-") == unit for existing in ids):
            continue
        if name in {"g1", "g2", "g3", "vision-ritual"}:
            continue
        ids.append(soulstone_id)
        table: dict[str, Any] = {
            "exec": ["llama-server", "-m", f"/m/{number}.gguf"],
            "models": [f"model-{number}"],
        }
        if draw(st.booleans()):
            table["port"] = 20000 + number
        else:
            table["socket"] = f"/run/soulstone/{number}.sock"
        extra = draw(st.lists(GROUPS, max_size=2))
        if extra:
            table["groups"] = extra
        files.setdefault(f"f{draw(st.integers(0, 2))}.toml", {})[soulstone_id] = table
    return {name: toml_document(tables) for name, tables in files.items()}


def load_texts(
    texts: dict[str, str], host: HostFacts = NO_PODMAN, folder: Path | None = None
) -> Codex:
    with tempfile.TemporaryDirectory() as scratch:
        where = folder or Path(scratch)
        where.mkdir(exist_ok=True)
        for name, text in texts.items():
            (where / name).write_text(text, encoding="utf-8")
        try:
            return load_codex([where], host, read_models=lambda _r: None)
        finally:
            shutil.rmtree(where, ignore_errors=True)


@SETTINGS
@given(valid_codexes())
def test_conflicts_are_symmetric_and_irreflexive(texts: dict[str, str]) -> None:
    codex = load_texts(texts)
    pairs = set(codex.conflicts)
    for a in codex.soulstones:
        assert not in_conflict(a, a)
        assert (a.id, a.id) not in pairs
        for b in codex.soulstones:
            assert in_conflict(a, b) == in_conflict(b, a)
            if a.id < b.id:
                assert ((a.id, b.id) in pairs) == in_conflict(a, b)


@SETTINGS
@given(valid_codexes())
def test_members_of_one_group_never_conflict(texts: dict[str, str]) -> None:
    codex = load_texts(texts)
    pairs = set(codex.conflicts)
    for members in codex.groups().values():
        for a in members:
            for b in members:
                assert (a, b) not in pairs


@SETTINGS
@given(valid_codexes())
def test_check_json_is_deterministic(texts: dict[str, str]) -> None:
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch, "codex")
        first = orjson.dumps(load_texts(texts, folder=folder).summary())
        reordered = dict(reversed(list(texts.items())))
        assert orjson.dumps(load_texts(reordered, folder=folder).summary()) == first


TOML_SCALARS = (
    st.text(max_size=12)
    | st.integers(-(2**63), 2**63 - 1)
    | st.booleans()
    | st.floats(allow_nan=False, allow_infinity=False)
)
TOML_VALUES = st.recursive(
    TOML_SCALARS,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)
KEYS = st.sampled_from(sorted(FIELD_NAMES)) | st.text(max_size=10)


@SETTINGS
@given(st.dictionaries(KEYS, TOML_VALUES, max_size=6), NAMES, st.none() | GROUPS)
def test_random_tables_raise_only_codex_errors(
    table: dict[str, Any], name: str, group: str | None
) -> None:
    header = f"{group}.{name}" if group else name
    try:
        load_texts({"a.toml": toml_document({header: table})}, PODMAN_HOST)
    except CodexError as error:
        assert error.problems
        assert all(p.file.endswith("a.toml") for p in error.problems)


@SETTINGS
@given(st.text(max_size=200))
def test_random_text_raises_only_codex_errors(text: str) -> None:
    try:
        load_texts({"a.toml": text})
    except CodexError as error:
        assert error.problems
