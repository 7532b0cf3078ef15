"""The typer application: global options and command registration."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from soulstone import __version__
from soulstone.codex.facts import HostFacts
from soulstone.codex.load import codex_sources, load_codex
from soulstone.codex.models import Codex
from soulstone.errors import CodexError, SoulstoneError, UsageError
from soulstone.host import detect_host
from soulstone.paths import Paths

T = TypeVar("T")


PIPE_WIDTH = 200


def make_console(*, stderr: bool) -> Console:
    """A console that keeps tables readable when output goes to a pipe or file."""
    stream = sys.stderr if stderr else sys.stdout
    piped = not stream.isatty() and "COLUMNS" not in os.environ
    return Console(stderr=stderr, width=PIPE_WIDTH if piped else None)


@dataclass
class Session:
    """What every command shares: where the codex is, the XDG paths, the consoles."""

    codex_paths: list[Path]
    paths: Paths
    out: Console = field(default_factory=lambda: make_console(stderr=False))
    err: Console = field(default_factory=lambda: make_console(stderr=True))

    def sources(self) -> tuple[list[Path], bool]:
        """The codex sources in force and whether the user named them."""
        return codex_sources(self.codex_paths, os.environ, self.paths)

    def host(self) -> HostFacts:
        """Facts about this machine, looked up once per command."""
        return detect_host()

    def load(self) -> Codex:
        """Load the codex in force; raises CodexError or UsageError."""
        sources, named = self.sources()
        return load_codex(sources, self.host(), named=named)


app = typer.Typer(
    name="soulstone",
    help="Local LLM engines behind one secure OpenAI-compatible gateway.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        print(f"soulstone {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    ctx: typer.Context,
    codex: Annotated[
        list[Path] | None,
        typer.Option(
            "--codex",
            metavar="PATH",
            help="A codex file or folder of *.toml (repeatable). "
            "Default: $SOULSTONE_CODEX, else $XDG_CONFIG_HOME/soulstone/soulstones/.",
        ),
    ] = None,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")
    ] = False,
) -> None:
    """soulstone: declare engines in TOML, check them, run them, serve them."""
    ctx.obj = Session(codex_paths=list(codex or []), paths=Paths.from_env())


def session(ctx: typer.Context) -> Session:
    """The Session that the main callback put on the context."""
    obj = ctx.find_root().obj
    assert isinstance(obj, Session)
    return obj


def guarded(ctx: typer.Context, action: Callable[[], T]) -> T:
    """Run an action; report soulstone errors on stderr with exit 1 (2 for usage errors)."""
    err = session(ctx).err
    try:
        return action()
    except UsageError as error:
        err.print(f"[red]error:[/red] {escape(str(error))}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None
    except CodexError as error:
        from soulstone.cli.render import print_problems

        print_problems(err, error.problems, "error", "bold red")
        print_problems(err, error.warnings, "warning", "yellow")
        count = len(error.problems)
        err.print(f"{count} error{'s' if count != 1 else ''} in {error.subject}", style="red")
        raise typer.Exit(1) from None
    except SoulstoneError as error:
        err.print(f"[red]error:[/red] {escape(str(error))}", highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None


def _register() -> None:
    from soulstone.cli import (
        audit,
        check,
        clients,
        council,
        demo,
        engines,
        forge,
        init,
        lora,
        models,
        observe,
        serve,
        tools,
        ui,
    )

    audit.register(app)
    check.register(app)
    clients.register(app)
    council.register(app)
    demo.register(app)
    serve.register(app)
    forge.register(app)
    engines.register(app)
    init.register(app)
    lora.register(app)
    models.register(app)
    observe.register(app)
    tools.register(app)
    ui.register(app)


def main() -> None:
    """Console-script entry point."""
    _register()
    app(prog_name="soulstone")
    sys.exit(0)
