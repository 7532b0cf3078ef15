"""Routing (pure): rules, the router persona's choice, its schema, the veto's verdict."""

from __future__ import annotations

from typing import Any

import jsonschema
import pytest

from soulstone.council.models import Council, Router, Rule
from soulstone.council.route import (
    Verdict,
    parse_router_choice,
    parse_verdict,
    response_format,
    route_by_rules,
    router_schema,
    veto_schema,
)

PANTHEON = Council(
    name="pantheon", personas=("maat", "lilith", "thoth", "isis"), aggregator="thoth",
    router=Router(kind="rules", max_personas=2),
    rules=(Rule(match="(?i)myth|history", personas=("isis", "thoth", "maat")),
           Rule(match="code", personas=("lilith",)),
           Rule(match=".", personas=("maat",))),
)  # fmt: skip


def test_rules_the_first_match_wins_and_is_capped() -> None:
    assert route_by_rules(PANTHEON, "Tell me a MYTH about code") == ("isis", "thoth")
    assert route_by_rules(PANTHEON, "review this code") == ("lilith",)
    assert route_by_rules(PANTHEON, "x") == ("maat",)
    assert route_by_rules(PANTHEON, "") is None
    uncapped = PANTHEON.model_copy(update={"router": Router(kind="rules")})
    assert route_by_rules(uncapped, "history") == ("isis", "thoth", "maat")


@pytest.mark.parametrize(
    ("answer", "names", "fell_back"),
    [
        ('{"personas": ["lilith", "maat"]}', ("lilith", "maat"), None),
        ('{"personas": ["lilith", "ra", "lilith", 5, "isis", "maat"]}', ("lilith", "isis"), None),
        ('```json\n{"personas": ["isis"]}\n```', ("isis",), None),
        ('{"personas": []}', None, "none of the council's personas"),
        ('{"personas": ["ra"]}', None, "none of the council's personas"),
        ('{"persona": ["isis"]}', None, "no `personas` list"),
        ('{"personas": "isis"}', None, "no `personas` list"),
        ("isis and maat", None, "not a JSON object"),
        ('["isis"]', None, "not a JSON object"),
        ("", None, "not a JSON object"),
    ],
)
def test_router_choice_keeps_council_personas_capped_or_falls_back(
    answer: str, names: tuple[str, ...] | None, fell_back: str | None
) -> None:
    chosen, reason = parse_router_choice(PANTHEON, answer)
    if fell_back is None:
        assert (chosen, reason) == (names, None)
    else:
        assert chosen == PANTHEON.personas
        assert reason is not None and fell_back in reason


def test_router_schema_accepts_only_council_personas() -> None:
    schema = router_schema(PANTHEON)
    assert schema == {
        "type": "object",
        "properties": {"personas": {"type": "array",
                                    "items": {"enum": ["maat", "lilith", "thoth", "isis"]},
                                    "minItems": 1, "maxItems": 2}},
        "required": ["personas"],
    }  # fmt: skip
    jsonschema.validate({"personas": ["maat", "isis"]}, schema)
    bad_answers: list[dict[str, Any]] = [
        {"personas": ["ra"]}, {}, {"personas": "maat"},
        {"personas": []},  # none: it would only fall back
        {"personas": ["maat", "isis", "thoth"]},  # over max_personas
    ]  # fmt: skip
    for bad in bad_answers:
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, schema)
    uncapped = router_schema(
        PANTHEON.model_copy(update={"router": Router(kind="model", persona="maat")})
    )
    assert "maxItems" not in uncapped["properties"]["personas"]
    jsonschema.validate({"personas": ["maat", "lilith", "thoth", "isis"]}, uncapped)
    assert response_format("router", schema) == {
        "type": "json_schema",
        "json_schema": {"name": "router", "schema": schema, "strict": True},
    }


def test_verdicts_parse_and_fit_their_schema() -> None:
    schema = veto_schema()
    for document in ({"verdict": "accept", "reason": ""}, {"verdict": "veto", "reason": "no"}):
        jsonschema.validate(document, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"verdict": "maybe", "reason": ""}, schema)
    with pytest.raises(jsonschema.ValidationError):  # the grammar stops a reason that runs on
        jsonschema.validate({"verdict": "veto", "reason": "no " * 300}, schema)
    assert parse_verdict('{"verdict": "veto", "reason": "it lies"}') == Verdict("veto", "it lies")
    assert parse_verdict('{"verdict": "accept"}') == Verdict("accept", "")
    assert parse_verdict('```\n{"verdict": "accept", "reason": "fine"}\n```') == Verdict(
        "accept", "fine"
    )
    for bad in ('{"verdict": "maybe", "reason": ""}', "accept", "[]", '{"reason": "x"}'):
        assert parse_verdict(bad) is None
