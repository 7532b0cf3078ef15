"""`soulstone check`: validate a codex and show it."""

from __future__ import annotations

from typing import Annotated

import orjson
import typer

from soulstone.cli.app import guarded, session
from soulstone.cli.render import codex_table, conflicts_text, print_problems
from soulstone.codex.models import Codex
from soulstone.errors import CodexError

JSON_OPTIONS = orjson.OPT_INDENT_2


def _print_json(document: object) -> None:
    typer.echo(orjson.dumps(document, option=JSON_OPTIONS).decode())


def _show(ctx: typer.Context, codex: Codex) -> None:
    s = session(ctx)
    s.out.print(codex_table(codex))
    s.out.print(conflicts_text(codex), highlight=False)
    print_problems(s.err, codex.warnings, "warning", "yellow")


def check(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for machines.")] = False,
) -> None:
    """Validate the codex and print its soulstones and conflict pairs (exit 1 if invalid)."""
    s = session(ctx)
    if not as_json:
        _show(ctx, guarded(ctx, s.load))
        return

    def load_or_report() -> Codex | None:
        try:
            return s.load()
        except CodexError as error:
            _print_json(
                {
                    "errors": [p.as_dict() for p in error.problems],
                    "warnings": [w.as_dict() for w in error.warnings],
                }
            )
            return None

    codex = guarded(ctx, load_or_report)
    if codex is None:
        raise typer.Exit(1)
    _print_json(codex.summary())


def register(app: typer.Typer) -> None:
    """Add the commands of this module to the application."""
    app.command()(check)
