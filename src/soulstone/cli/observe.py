"""`soulstone observe rules|dashboard`: print the shipped alert rules and dashboard."""

from __future__ import annotations

import sys

import typer

from soulstone.observe.shipped import alert_rules, dashboard

observe_app = typer.Typer(
    help="Monitoring files for a Prometheus and a Grafana: alert rules and a dashboard.",
    no_args_is_help=True,
)


@observe_app.command("rules")
def rules() -> None:
    """Print the Prometheus alert rules (soulstone observe rules > soulstone-alerts.yml)."""
    sys.stdout.write(alert_rules())


@observe_app.command("dashboard")
def dashboard_command() -> None:
    """Print the Grafana dashboard JSON (soulstone observe dashboard > soulstone.json)."""
    sys.stdout.write(dashboard())


def register(app: typer.Typer) -> None:
    """Add the command group of this module to the application."""
    app.add_typer(observe_app, name="observe")
