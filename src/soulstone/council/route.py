"""Which personas answer, and what the router and veto personas may say (pure).

The router persona's and the veto persona's answers are forced by the
engine's structured output (`response_format` json_schema) to the schemas
below; the parsers still accept nothing else, and say why.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any, Literal, NamedTuple

import orjson

from soulstone.council.models import Council

VerdictKind = Literal["accept", "veto"]
_FENCE = re.compile(r"^```[A-Za-z0-9_-]*\s*\n?(.*?)\n?```$", re.DOTALL)


class Verdict(NamedTuple):
    """The veto persona's answer on a draft: accept it, or send it back with a reason."""

    verdict: VerdictKind
    reason: str


def _capped(council: Council, names: Iterable[str]) -> tuple[str, ...]:
    """The council's personas among these names, each once, in the order given, capped."""
    chosen = tuple(dict.fromkeys(n for n in names if n in council.personas))
    cap = council.router.max_personas
    return chosen[:cap] if cap is not None else chosen


def route_by_rules(council: Council, last_user_text: str) -> tuple[str, ...] | None:
    """The personas of the first rule whose expression matches the text, or None.

    A rule matches when its expression is found anywhere in the text
    (`re.search`). Its personas are capped at the router's `max_personas`.
    None means no rule matched: the caller falls back to every persona.
    """
    for rule in council.rules:
        if rule.pattern().search(last_user_text) is not None:
            chosen = _capped(council, rule.personas)
            if chosen:
                return chosen
    return None


def _json_object(text: str) -> Any:
    """The JSON value of an answer, allowing a Markdown code fence around it; None if none."""
    stripped = text.strip()
    fenced = _FENCE.match(stripped)
    if fenced is not None:
        stripped = fenced.group(1).strip()
    try:
        return orjson.loads(stripped)
    except orjson.JSONDecodeError:
        return None


def parse_router_choice(council: Council, text: str) -> tuple[tuple[str, ...], str | None]:
    """The personas the router persona chose, and why it fell back (None when it did not).

    Names that are not the council's personas are dropped, repeats too, and
    the choice is capped at `max_personas`. An answer that is not
    `{"personas": [names]}`, or that leaves no persona, falls back to every
    persona of the council, with a short reason for the record.
    """
    document = _json_object(text)
    if not isinstance(document, dict):
        return council.personas, "the router's answer is not a JSON object"
    names = document.get("personas")
    if not isinstance(names, list):
        return council.personas, "the router's answer has no `personas` list"
    chosen = _capped(council, (n for n in names if isinstance(n, str)))
    if not chosen:
        return council.personas, "the router chose none of the council's personas"
    return chosen, None


def router_schema(council: Council) -> dict[str, Any]:
    """The JSON schema the router persona's answer is forced to: `{"personas": [names]}`.

    At least one name, and at most `max_personas` when the router has a cap:
    a forced empty list would only fall back to every persona.
    """
    names: dict[str, Any] = {"type": "array", "items": {"enum": list(council.personas)},
                             "minItems": 1}  # fmt: skip
    if council.router.max_personas is not None:
        names["maxItems"] = council.router.max_personas
    return {"type": "object", "properties": {"personas": names}, "required": ["personas"]}


VERDICT_REASON_CHARS = 600  # a weak model under a grammar could write until max_tokens


def veto_schema() -> dict[str, Any]:
    """The JSON schema the veto persona's answer is forced to: a verdict and a short reason."""
    return {
        "type": "object",
        "properties": {
            "verdict": {"type": "string", "enum": ["accept", "veto"]},
            "reason": {"type": "string", "maxLength": VERDICT_REASON_CHARS},
        },
        "required": ["verdict", "reason"],
    }


def response_format(name: str, schema: dict[str, Any]) -> dict[str, Any]:
    """The chat-completions `response_format` that forces an answer to this schema."""
    return {"type": "json_schema", "json_schema": {"name": name, "schema": schema, "strict": True}}


def parse_verdict(text: str) -> Verdict | None:
    """The veto persona's verdict, or None when its answer is not one.

    A verdict is `{"verdict": "accept" | "veto", "reason": "..."}`; a missing
    or non-string reason reads as "". What None means (accept, or a failed
    veto) is the caller's decision.
    """
    document = _json_object(text)
    if not isinstance(document, dict):
        return None
    verdict = document.get("verdict")
    if verdict not in ("accept", "veto"):
        return None
    reason = document.get("reason")
    return Verdict(verdict, reason if isinstance(reason, str) else "")
