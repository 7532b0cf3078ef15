"""The Prometheus alert rules and the Grafana dashboard shipped with soulstone (SPEC C9)."""

from __future__ import annotations

from importlib.resources import files

ALERT_RULES = "alerts.yml"
DASHBOARD = "grafana.json"


def shipped(name: str) -> str:
    """The text of one shipped file of `soulstone.observe` (ALERT_RULES or DASHBOARD)."""
    return (files("soulstone.observe") / "assets" / name).read_text(encoding="utf-8")


def alert_rules() -> str:
    """The Prometheus alert rules file (YAML, for `rule_files:`)."""
    return shipped(ALERT_RULES)


def dashboard() -> str:
    """The Grafana dashboard (JSON, with a `DS_PROMETHEUS` datasource input to import)."""
    return shipped(DASHBOARD)
