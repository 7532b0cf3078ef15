"""`soulstone check` and `soulstone demo`: validate a codex and show it."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Annotated

import orjson
import typer

from soulstone.cli.app import guarded, session
from soulstone.cli.render import codex_table, conflicts_text, print_problems
from soulstone.codex.load import load_codex
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


def starter_codex() -> resources.abc.Traversable:
    """The bundled starter codex folder (the reference examples, commented)."""
    return resources.files("soulstone.codex").joinpath("starter")


def demo(ctx: typer.Context) -> None:
    """Check the bundled example codex and show what soulstone makes of it."""
    s = session(ctx)
    with resources.as_file(starter_codex()) as folder:
        s.out.print(f"[bold]soulstone demo[/bold]: the bundled example codex ({folder})")
        codex = guarded(ctx, lambda: load_codex([Path(folder)], s.host()))
        _show(ctx, codex)


def register(app: typer.Typer) -> None:
    """Add the commands of this module to the application."""
    app.command()(check)
    app.command()(demo)
