"""`soulstone tools init|pin|check`: the tools policy file."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from soulstone.cli.app import Session, guarded, session
from soulstone.errors import SoulstoneError
from soulstone.tools.policy import default_policy, drifted, repinned
from soulstone.tools.store import PolicyError, load_policy, save_policy

tools_app = typer.Typer(help="The tools policy: pinned tool schemas (tools.yaml).",
                        no_args_is_help=True)  # fmt: skip

ToolsOption = Annotated[
    Path | None,
    typer.Option("--tools", metavar="PATH",
                 help="The policy file (default: $XDG_CONFIG_HOME/soulstone/tools.yaml)."),
]  # fmt: skip


def tools_path(s: Session, given: Path | None) -> Path:
    """The policy file in force."""
    return given or s.paths.config / "tools.yaml"


@tools_app.command("init")
def init(ctx: typer.Context, tools: ToolsOption = None) -> None:
    """Write an editable copy of the built-in policy (refuses to overwrite)."""
    s = session(ctx)
    path = tools_path(s, tools)

    def write() -> None:
        if path.exists():
            raise SoulstoneError(f"{path} exists: refusing to overwrite it")
        save_policy(path, default_policy())

    guarded(ctx, write)
    s.out.print(f"wrote {path} (the nine memory tools; edit, then `soulstone tools pin`)")


@tools_app.command("pin")
def pin_command(ctx: typer.Context, tools: ToolsOption = None) -> None:
    """Recompute every tool's sha256 after a deliberate change."""
    s = session(ctx)
    path = tools_path(s, tools)

    def repin() -> list[str]:
        if not path.exists():
            raise SoulstoneError(f"{path} does not exist: `soulstone tools init` writes one")
        policy = load_policy(path, check_pins=False)
        save_policy(path, repinned(policy))
        return drifted(policy)

    changed = guarded(ctx, repin)
    s.out.print(f"pinned {path}" + (f"; updated {', '.join(changed)}" if changed else ""))


@tools_app.command("check")
def check(ctx: typer.Context, tools: ToolsOption = None) -> None:
    """Verify the pinned hashes; exit 1 naming each tool whose schema drifted."""
    s = session(ctx)
    path = tools_path(s, tools)
    try:
        policy = load_policy(path, check_pins=False)
    except PolicyError as error:
        s.err.print(f"[red]error:[/red] {error}", highlight=False)
        raise typer.Exit(1) from None
    drift = drifted(policy)
    for name in drift:
        s.err.print(f"[red]drifted:[/red] {name}: its sha256 does not match its schema")
    if drift:
        raise typer.Exit(1)
    source = path if path.exists() else "the built-in default"
    s.out.print(f"{len(policy.tools)} tools pinned and intact ({source})")


def register(app: typer.Typer) -> None:
    """Add the command group of this module to the application."""
    app.add_typer(tools_app, name="tools")
