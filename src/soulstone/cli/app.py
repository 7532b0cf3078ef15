"""The typer application: global options and command registration."""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NamedTuple, TypeVar

import typer
from typer.core import TyperGroup

from soulstone import __version__
from soulstone.errors import CodexError, SoulstoneError, UsageError
from soulstone.paths import Paths

if TYPE_CHECKING:
    from rich.console import Console

    from soulstone.codex.facts import HostFacts
    from soulstone.codex.models import Codex

T = TypeVar("T")


PIPE_WIDTH = 200


def make_console(*, stderr: bool) -> Console:
    """A console that keeps tables readable when output goes to a pipe or file."""
    from rich.console import Console

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
        from soulstone.codex.load import codex_sources

        return codex_sources(self.codex_paths, os.environ, self.paths)

    def host(self) -> HostFacts:
        """Facts about this machine, looked up once per command."""
        from soulstone.host import detect_host

        return detect_host()

    def load(self) -> Codex:
        """Load the codex in force; raises CodexError or UsageError."""
        from soulstone.codex.load import load_codex

        sources, named = self.sources()
        return load_codex(sources, self.host(), named=named)


class CommandEntry(NamedTuple):
    """A top-level command: the module that registers it, and its one-line help."""

    module: str
    help: str


# Every top-level command, in the order `soulstone --help` lists them. A command's module
# is imported only when the command runs (or its own --help is asked for), so the CLI
# starts without importing what other commands need; tests/cli keeps `help` equal to
# each command's own first docstring line.
COMMANDS: dict[str, CommandEntry] = {
    "audit": CommandEntry("audit", "Check sockets, caches, clients.yaml, the codex (TCP too "
                          "with --strict); exit 1 if any."),
    "check": CommandEntry("check", "Validate the codex and the councils; print the soulstones "
                          "and conflict pairs (exit 1 if not)."),
    "demo": CommandEntry("demo", "Build (once) two tiny llama.cpp engines, and ask each "
                         "through the gateway."),
    "serve": CommandEntry("serve", "Serve the OpenAI-compatible gateway on a Unix socket (and "
                          "TCP when asked)."),
    "reload": CommandEntry("serve", "Ask the running gateway to read its codex and clients "
                           "file again (like SIGHUP)."),
    "forge": CommandEntry("forge", "Write one Quadlet unit per soulstone with an image, plus "
                          "the gateway's units."),
    "up": CommandEntry("engines", "Manifest a soulstone or group: stop what conflicts, start "
                       "it, wait until healthy."),
    "down": CommandEntry("engines", "Stop a soulstone, a group, or every running soulstone."),
    "status": CommandEntry("engines", "Show every soulstone's state, pid or unit, uptime, "
                           "address, health and GPU memory."),
    "logs": CommandEntry("engines", "Print a soulstone's engine log (process runtime: its log "
                         "file; quadlet: the journal)."),
    "init": CommandEntry("init", "Write a commented starter codex (and a starter council) "
                         "into their folders."),
    "ui": CommandEntry("ui", "Open the dashboard of the running gateway: prints its URL (with "
                       "a one-time token) first."),
    "clients": CommandEntry("clients", "Manage who may call the gateway (clients.yaml)."),
    "council": CommandEntry("council", "Councils: many personas asked at once (declared in "
                            "TOML)."),
    "lora": CommandEntry("lora", "LoRA adapters: cold in the registry, warm on disk, hot in "
                         "vLLM."),
    "models": CommandEntry("models", "Model artifacts: what the codex needs and what the "
                           "Hugging Face cache holds."),
    "observe": CommandEntry("observe", "Monitoring files for a Prometheus and a Grafana: alert "
                            "rules and a dashboard."),
    "tools": CommandEntry("tools", "The tools policy: pinned tool schemas (tools.yaml)."),
}  # fmt: skip


# Click's types are typer's own (typer 0.29 vendors click): they are `Any` here.
def load_command(name: str) -> Any:
    """The real click command (or group) of a top-level command, its module imported."""
    module = importlib.import_module(f"soulstone.cli.{COMMANDS[name].module}")
    registered = typer.Typer()
    module.register(registered)
    command = typer.main.get_group(registered).commands.get(name)
    if command is None:
        raise LookupError(f"soulstone.cli.{COMMANDS[name].module} registers no command {name!r}")
    return command


class LazyCommands(TyperGroup):
    """The top-level group: lists commands from COMMANDS, imports one only to run it."""

    def list_commands(self, ctx: Any) -> list[str]:
        """Every command name, in COMMANDS order."""
        return list(COMMANDS)

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        """The command to run, its module imported."""
        if cmd_name not in COMMANDS:
            return None
        return load_command(cmd_name)

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        """The arguments; none at all prints the help (exit 2, as typer's own group does)."""
        if not args and self.no_args_is_help and not ctx.resilient_parsing:
            typer.echo(ctx.get_help())
            ctx.exit(2)
        rest: list[str] = super().parse_args(ctx, args)
        return rest

    def format_help(self, ctx: Any, formatter: Any) -> None:
        """The group's help, its command rows taken from COMMANDS (drawn without rich)."""
        from soulstone.cli.top_help import help_width, top_help

        options = [(", ".join(param.opts), "" if getattr(param, "is_flag", False)
                    else (param.metavar or ""), getattr(param, "help", None) or "")
                   for param in self.get_params(ctx)]  # fmt: skip
        commands = [(name, "", entry.help) for name, entry in COMMANDS.items()]
        usage = f"{ctx.command_path} {' '.join(self.collect_usage_pieces(ctx))}"
        formatter.write(top_help(usage, self.help or "", options, commands, help_width()))


app = typer.Typer(
    name="soulstone",
    cls=LazyCommands,
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
    from rich.markup import escape

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


def main() -> None:
    """Console-script entry point."""
    app(prog_name="soulstone")
    sys.exit(0)
