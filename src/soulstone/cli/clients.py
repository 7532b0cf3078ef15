"""`soulstone clients add|revoke`: edit clients.yaml safely (comments kept); keys print once."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from soulstone.cli.app import Session, guarded, session
from soulstone.guard.clients import KeyDecl
from soulstone.guard.keys import hash_key, new_key
from soulstone.guard.store import add_client, revoke_keys

clients_app = typer.Typer(help="Manage who may call the gateway (clients.yaml).",
                          no_args_is_help=True)  # fmt: skip

ClientsOption = Annotated[
    Path | None,
    typer.Option("--clients", metavar="PATH",
                 help="The clients file (default: $XDG_CONFIG_HOME/soulstone/clients.yaml)."),
]  # fmt: skip


def _path(s: Session, given: Path | None) -> Path:
    return given or s.paths.config / "clients.yaml"


@clients_app.command("add")
def add(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="The client's name.")],
    user: Annotated[list[str] | None, typer.Option("--user", help="A Unix user.")] = None,
    group: Annotated[list[str] | None, typer.Option("--group", help="A Unix group.")] = None,
    key: Annotated[bool, typer.Option("--key", help="Make an API key; print it once.")] = False,
    models: Annotated[str | None, typer.Option("--models", metavar="M,...",
                                               help="Only these models (default: all).")] = None,
    admin: Annotated[bool, typer.Option("--admin", help="May use /metrics and admin.")] = False,
    key_transport: Annotated[str | None, typer.Option(
        "--key-transport", help="Accept the new key only over `unix` or `tcp`.")] = None,
    clients: ClientsOption = None,
) -> None:  # fmt: skip
    """Add a client (or add users, groups, a key to it). With --key, print the key once."""
    s = session(ctx)
    path = _path(s, clients)
    secret, stored = None, None
    if key_transport not in (None, "unix", "tcp"):
        s.err.print("--key-transport must be unix or tcp", style="red")
        raise typer.Exit(2)
    if key:
        secret, key_id = new_key()
        transports = [key_transport] if key_transport else None
        stored = KeyDecl(id=key_id, hash=hash_key(secret), transports=transports)
    wanted = [m.strip() for m in models.split(",") if m.strip()] if models is not None else None
    guarded(ctx, lambda: add_client(path, name, user or [], group or [], wanted, admin, stored))
    if secret is not None:
        print(secret, flush=True)  # stdout alone: `KEY=$(soulstone clients add x --key)`
    s.err.print(f"{'updated' if secret is None else 'added a key to'} client {name} in {path}",
                highlight=False)  # fmt: skip


@clients_app.command("revoke")
def revoke(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="The client's name.")],
    key_id: Annotated[str | None, typer.Argument(help="One key id (default: all).")] = None,
    clients: ClientsOption = None,
) -> None:  # fmt: skip
    """Revoke a client's keys (all, or one by id); a running gateway sees it on reload."""
    s = session(ctx)
    path = _path(s, clients)
    count = guarded(ctx, lambda: revoke_keys(path, name, key_id))
    s.out.print(f"revoked {count} key(s) of {name}; `soulstone reload` or SIGHUP applies it")


def register(app: typer.Typer) -> None:
    """Add the command group of this module to the application."""
    app.add_typer(clients_app, name="clients")
