"""`soulstone check`: validate a codex (and the council files) and show them."""

from __future__ import annotations

from typing import Annotated

import orjson
import typer

from soulstone.cli.app import guarded, session
from soulstone.cli.council_files import CouncilsOption, load_checked
from soulstone.cli.gateway_client import default_socket
from soulstone.cli.render import codex_table, conflicts_text, print_problems
from soulstone.codex.models import Codex
from soulstone.council.models import Councils
from soulstone.errors import CodexError

JSON_OPTIONS = orjson.OPT_INDENT_2


def _print_json(document: object) -> None:
    typer.echo(orjson.dumps(document, option=JSON_OPTIONS).decode())


def _show(ctx: typer.Context, codex: Codex, councils: Councils) -> None:
    s = session(ctx)
    s.out.print(codex_table(codex))
    s.out.print(conflicts_text(codex), highlight=False)
    if councils.councils or councils.personas:
        s.out.print(
            f"councils: {', '.join(councils.councils) or 'none'} "
            f"({len(councils.personas)} personas)",
            highlight=False,
        )
    print_problems(s.err, (*codex.warnings, *councils.warnings), "warning", "yellow")


def check(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for machines.")] = False,
    councils: CouncilsOption = None,
) -> None:
    """Validate the codex and the councils; print the soulstones and conflict pairs (exit 1 if not).

    The council files are checked too when their folder exists (or with --councils).
    """
    s = session(ctx)
    socket = default_socket(s.paths.runtime)
    if not as_json:
        _show(ctx, *guarded(ctx, lambda: load_checked(s, councils, socket)))
        return

    def load_or_report() -> tuple[Codex, Councils] | None:
        try:
            return load_checked(s, councils, socket)
        except CodexError as error:
            _print_json(
                {
                    "errors": [p.as_dict() for p in error.problems],
                    "warnings": [w.as_dict() for w in error.warnings],
                }
            )
            return None

    loaded = guarded(ctx, load_or_report)
    if loaded is None:
        raise typer.Exit(1)
    codex, declared = loaded
    document = codex.summary()
    document["warnings"] = [w.as_dict() for w in (*codex.warnings, *declared.warnings)]
    _print_json(document)


def register(app: typer.Typer) -> None:
    """Add the commands of this module to the application."""
    app.command()(check)
