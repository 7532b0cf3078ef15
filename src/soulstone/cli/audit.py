"""`soulstone audit [--strict]`: what makes this installation less private than it should be."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from soulstone.cli.app import guarded, session
from soulstone.cli.gateway_client import default_socket
from soulstone.guard.audit import (
    Finding,
    audit_caches,
    audit_clients,
    audit_codex,
    audit_dashboard,
    audit_engine_sockets,
    audit_listeners,
    audit_socket,
    model_caches,
)
from soulstone.runtimes.state import StateFolder


def audit(
    ctx: typer.Context,
    strict: Annotated[bool, typer.Option(
        "--strict", help="Also: nothing of ours on TCP, containers offline, engine sockets 0700.",
    )] = False,
    socket: Annotated[Path | None, typer.Option("--socket", metavar="PATH",
                                                help="The gateway's socket.")] = None,
    clients: Annotated[Path | None, typer.Option("--clients", metavar="PATH",
                                                 help="The clients file.")] = None,
) -> None:  # fmt: skip
    """Check sockets, caches, clients.yaml, the codex (TCP too with --strict); exit 1 if any."""
    s = session(ctx)
    codex = guarded(ctx, s.load)
    findings: list[Finding] = []
    if strict:
        findings += audit_listeners(StateFolder(s.paths.state))
        findings += audit_engine_sockets(StateFolder(s.paths.state))
    findings += audit_dashboard(StateFolder(s.paths.state))
    findings += audit_socket(socket or default_socket(s.paths.runtime))
    findings += audit_caches(model_caches(os.environ, s.paths.cache))
    findings += audit_clients(clients or s.paths.config / "clients.yaml")
    findings += audit_codex(codex)
    for finding in findings:
        s.err.print(f"[red]finding:[/red] {finding}", highlight=False, soft_wrap=True)
    if findings:
        s.err.print(f"{len(findings)} finding(s)", style="red")
        raise typer.Exit(1)
    s.out.print("audit: no findings" + (" (strict)" if strict else ""))


def register(app: typer.Typer) -> None:
    """Add the commands of this module to the application."""
    app.command()(audit)
