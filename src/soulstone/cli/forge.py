"""`soulstone forge`: write Quadlet units for the codex, and the gateway's units."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.text import Text

from soulstone.cli.app import Session, guarded, session
from soulstone.cli.render import print_problems
from soulstone.forge.units import ForgeOptions, UnitFile, forge_units
from soulstone.forge.write import ForgeReport, apply, plan, reload_user_systemd


def gateway_command() -> tuple[str, ...]:
    """The command that runs this installation's soulstone (for the gateway unit)."""
    script = Path(sys.executable).parent / "soulstone"
    if script.is_file():
        return (str(script),)
    return (sys.executable, "-m", "soulstone")


def _targets(s: Session, units: list[UnitFile], output: Path | None) -> dict[Path, str]:
    def folder(unit: UnitFile) -> Path:
        if output is not None:
            return output
        return s.paths.quadlet_units if unit.kind == "container" else s.paths.systemd_units

    return {folder(unit) / unit.name: unit.text for unit in units}


def _print_dry_run(s: Session, files: dict[Path, str], report: ForgeReport) -> None:
    for path, text in files.items():
        state = "unchanged" if path in report.unchanged else (
            "new" if not path.exists() else "changed"
        )  # fmt: skip
        s.out.print(Text(f"# ==> {path} ({state}) <==", style="bold"))
        s.out.print(text, end="", highlight=False, markup=False)
        s.out.print()
    for path in report.removed:
        s.out.print(Text(f"# would remove {path} (its soulstone is gone)", style="yellow"))


def forge(
    ctx: typer.Context,
    output: Annotated[
        Path | None,
        typer.Option(
            "--output",
            metavar="DIR",
            help="Write every unit here instead of ~/.config/containers/systemd/ "
            "(engines) and ~/.config/systemd/user/ (gateway).",
        ),
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print the units instead of writing them.")
    ] = False,
    strict: Annotated[
        bool,
        typer.Option("--strict", help="Engines get Network=none and serve on Unix sockets only."),
    ] = False,
    no_reload: Annotated[
        bool, typer.Option("--no-reload", help="Skip `systemctl --user daemon-reload`.")
    ] = False,
) -> None:
    """Write one Quadlet unit per soulstone with an image, plus the gateway's units."""
    s = session(ctx)
    codex = guarded(ctx, s.load)
    options = ForgeOptions(strict=strict, gateway_command=gateway_command())
    units, warnings = guarded(ctx, lambda: forge_units(codex, options))
    print_problems(s.err, (*codex.warnings, *warnings), "warning", "yellow")
    files = _targets(s, units, output)
    folders = {path.parent for path in files}
    report = guarded(ctx, lambda: plan(files, folders))
    if dry_run:
        _print_dry_run(s, files, report)
        return
    guarded(ctx, lambda: apply(files, report))
    for path in report.written:
        s.out.print(f"wrote {path}", highlight=False)
    for path in report.removed:
        s.out.print(f"removed {path}", highlight=False)
    s.out.print(
        f"{len(report.written)} written, {len(report.unchanged)} unchanged, "
        f"{len(report.removed)} removed"
    )
    if no_reload or not report.changed:
        return
    if not s.host().has_user_systemd:
        s.err.print(
            "no user systemd is reachable here: skipped `systemctl --user daemon-reload`",
            style="yellow",
        )
        return
    guarded(ctx, reload_user_systemd)
    s.out.print("reloaded the user systemd (systemctl --user daemon-reload)")


def register(app: typer.Typer) -> None:
    """Add the commands of this module to the application."""
    app.command()(forge)
