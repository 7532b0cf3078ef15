"""The shipped alert rules and dashboard as the tests read them: expressions and metric names."""

from __future__ import annotations

import json
import re
from typing import Any

import yaml

from soulstone.observe.shipped import alert_rules, dashboard

ENGINE_PREFIXES = ("vllm:", "llamacpp:")
PROMETHEUS_SERIES = {"up"}  # written by Prometheus itself for every target

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"' + r"|'(?:[^'\\]|\\.)*'")
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGE = re.compile(r"\[[^\]]*\]")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_WORD = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_KEYWORDS = {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring",
             "group_left", "group_right", "inf", "nan"}  # fmt: skip
_TYPE = re.compile(r"^# TYPE (\S+) (\S+)$", re.MULTILINE)
_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)[{ ]", re.MULTILINE)
_SUFFIXES = {"histogram": ("_bucket", "_sum", "_count"), "summary": ("", "_sum", "_count")}

# Grafana's variables, as a query in the dashboard would see them.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__interval": "1m", "$__range": "1h",
                     "$instance": ".*", "$model": ".*", "$soulstone": ".*"}  # fmt: skip


def rules() -> list[dict[str, Any]]:
    """Every rule of the shipped alert rules file."""
    groups = yaml.safe_load(alert_rules())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def panels() -> list[dict[str, Any]]:
    """Every panel of the shipped dashboard, rows' nested panels included."""
    found: list[dict[str, Any]] = []
    for panel in json.loads(dashboard())["panels"]:
        found.append(panel)
        found.extend(panel.get("panels", []))
    return found


def expressions() -> list[tuple[str, str]]:
    """(where, PromQL) for every rule and every dashboard query, Grafana variables filled in."""
    found = [(f"rule {rule['alert']}", rule["expr"]) for rule in rules()]
    for panel in panels():
        for target in panel.get("targets", []):
            found.append((f"panel {panel['title']!r} {target['refId']}", target["expr"]))
    variables = json.loads(dashboard())["templating"]["list"]
    found.extend((f"variable {v['name']}", selector(v["query"]["query"])) for v in variables)
    return [(where, grafana_filled(expr)) for where, expr in found]


def grafana_filled(expr: str) -> str:
    """The expression with Grafana's variables replaced as Grafana would (longest first)."""
    for name in sorted(GRAFANA_VARIABLES, key=len, reverse=True):
        expr = expr.replace(name, GRAFANA_VARIABLES[name])
    return expr


def selector(query: str) -> str:
    """A dashboard variable's `label_values(selector, label)` as its selector (PromQL)."""
    matched = re.fullmatch(r"label_values\((.*),\s*\w+\)", query.strip(), re.DOTALL)
    assert matched, f"not label_values(selector, label): {query}"
    return matched.group(1)


def metric_names(expr: str) -> set[str]:
    """The metric names an expression selects (not functions, keywords, labels or numbers)."""
    text = _STRING.sub('""', expr)
    text = _MATCHERS.sub(" ", text)
    text = _RANGE.sub(" ", text)
    text = _GROUPING.sub(" ", text)
    names = set()
    for match in _WORD.finditer(text):
        word, before = match.group(), text[match.start() - 1] if match.start() else " "
        if before.isdigit() or before == "." or word.lower() in _KEYWORDS:
            continue  # the exponent of a number, or a keyword
        if text[match.end() :].lstrip().startswith("("):
            continue  # a function
        names.add(word)
    return names


def exposed_names(exposition: str) -> set[str]:
    """Every series name an exposition (Prometheus text format) declares or carries."""
    names = set(_SAMPLE.findall(exposition))
    for name, kind in _TYPE.findall(exposition):
        names.update(name + suffix for suffix in _SUFFIXES.get(kind, ("",)))
    return names


def is_engine_series(name: str) -> bool:
    """A series an engine exports, re-exposed by the gateway with a `soulstone` label."""
    return name.startswith(ENGINE_PREFIXES)
