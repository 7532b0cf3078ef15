"""The forge's YAML writer: whatever it writes, PyYAML reads back as the same values."""

from __future__ import annotations

from typing import Any

import yaml
from hypothesis import given
from hypothesis import strategies as st

from soulstone.forge.yaml_text import Noted, comment_text, document, quoted, stream

TEXT = st.text(st.characters(exclude_categories=["Cs"]))
KEYS = st.from_regex(r"[A-Za-z_][A-Za-z0-9_./-]{0,12}", fullmatch=True) | TEXT
SCALARS = st.none() | st.booleans() | st.integers() | TEXT
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(KEYS, inner, max_size=4),
    max_leaves=20,
)


@given(TEXT)
def test_a_quoted_string_reads_back_exactly(text: str) -> None:
    assert yaml.safe_load(quoted(text)) == text


@given(st.dictionaries(KEYS, VALUES, max_size=5), st.lists(TEXT, max_size=3))
def test_a_document_reads_back_exactly(value: dict[str, Any], notes: list[str]) -> None:
    noted = {key: Noted(item, tuple(notes)) for key, item in value.items()}
    assert yaml.safe_load(document(value)) == (value or None)
    assert yaml.safe_load(document(noted)) == (value or None)


@given(st.lists(st.dictionaries(KEYS, VALUES, min_size=1, max_size=3), max_size=3), TEXT)
def test_a_stream_holds_each_document_once(docs: list[dict[str, Any]], header: str) -> None:
    text = stream([f"# {comment_text(header)}"], docs)
    assert list(yaml.safe_load_all(text)) == docs


@given(TEXT)
def test_a_comment_stays_on_one_line(text: str) -> None:
    line = f"# {comment_text(text)}"
    assert line.splitlines() == [line] or line == "# "
    assert yaml.safe_load(f"{line}\nkey: 1\n") == {"key": 1}


def test_strings_that_look_like_other_things_stay_strings() -> None:
    words = ["yes", "no", "on", "1", "0x1F", "1e3", "null", "~", "", "- a", "a: b", "#", "'"]
    doc = {"items": words, "nested": [{"k": w} for w in words]}
    assert yaml.safe_load(document(doc)) == doc


def test_list_items_with_notes_keep_their_notes_above_the_dash() -> None:
    doc = {"list": [{"first": Noted(1, ("about first",)), "second": 2}]}
    text = document(doc)
    assert "  # about first\n  - first: 1\n" in text
    assert yaml.safe_load(text) == {"list": [{"first": 1, "second": 2}]}
