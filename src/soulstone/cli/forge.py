"""`soulstone forge`: write Quadlet units for the codex, and the gateway's units.

`--kube` writes Kubernetes manifests for the same codex instead (SPEC C12).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.text import Text

from soulstone.cli.app import Session, guarded, session
from soulstone.cli.render import print_problems
from soulstone.errors import UsageError
from soulstone.forge.units import ForgeOptions, UnitFile, forge_units
from soulstone.forge.write import KUBE_SUFFIXES, ForgeReport, apply, plan, reload_user_systemd


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


def _refuse_strict() -> None:
    raise UsageError(
        "--strict (engines with no network, on Unix sockets) is for Quadlet units; a "
        "Kubernetes fleet is reached over the network: leave out --strict with --kube"
    )


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


def _report(s: Session, report: ForgeReport) -> None:
    for path in report.written:
        s.out.print(f"wrote {path}", highlight=False)
    for path in report.removed:
        s.out.print(f"removed {path}", highlight=False)
    s.out.print(
        f"{len(report.written)} written, {len(report.unchanged)} unchanged, "
        f"{len(report.removed)} removed"
    )


def forge_kube(ctx: typer.Context, s: Session, output: Path | None, dry_run: bool) -> None:
    """Write (or print) the Kubernetes manifests and the router's values file."""
    from soulstone.forge.kube_values import forge_kube as kube_files

    codex = guarded(ctx, s.load)
    made, warnings = guarded(ctx, lambda: kube_files(codex))
    print_problems(s.err, (*codex.warnings, *warnings), "warning", "yellow")
    folder = output if output is not None else s.paths.kube_manifests
    files = {folder / item.name: item.text for item in made}
    report = guarded(ctx, lambda: plan(files, [folder], KUBE_SUFFIXES))
    if dry_run:
        _print_dry_run(s, files, report)
        return
    guarded(ctx, lambda: apply(files, report))
    _report(s, report)
    s.out.print(f"next: kubectl apply -f {folder}, then helm install the router (see "
                f"{folder / 'helm'})", highlight=False)  # fmt: skip


def forge(
    ctx: typer.Context,
    output: Annotated[
        Path | None,
        typer.Option(
            "--output",
            metavar="DIR",
            help="Write every unit here instead of ~/.config/containers/systemd/ "
            "(engines) and ~/.config/systemd/user/ (gateway); with --kube, the "
            "manifests instead of ~/.config/soulstone/kube/.",
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
    kube: Annotated[
        bool,
        typer.Option(
            "--kube",
            help="Write Kubernetes manifests instead: per soulstone with an image and a port "
            "a Deployment and a Service (soulstone-NAME.yaml), and helm/vllm-stack-values.yaml "
            "for vLLM's production-stack router, the fleet's front door.",
        ),
    ] = False,
) -> None:
    """Write one Quadlet unit per soulstone with an image, plus the gateway's units.

    With --kube: Kubernetes manifests for the same codex instead, a Deployment
    and a Service per soulstone, and Helm values for vLLM's production-stack
    router, written into --output DIR (default ~/.config/soulstone/kube/) or,
    with --dry-run, printed. Soulstones that cannot run there are named.
    """
    s = session(ctx)
    if kube:
        if strict:
            guarded(ctx, _refuse_strict)
        forge_kube(ctx, s, output, dry_run)
        return
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
    _report(s, report)
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
