"""`soulstone lora add|list|show|rm|load|unload`: through the gateway when it runs."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import orjson
import typer

from soulstone.cli.app import Session, guarded, session
from soulstone.cli.gateway_client import GatewayClient, default_socket, running_gateway
from soulstone.errors import SoulstoneError, UsageError

if TYPE_CHECKING:
    from soulstone.codex.models import Codex
    from soulstone.lora.cache import AdapterCache

# While a gateway runs, a command here is one admin call: the registry (ZODB), the
# adapter checks and the codex's models are imported only where no gateway runs.

lora_app = typer.Typer(help="LoRA adapters: cold in the registry, warm on disk, hot in vLLM.",
                       no_args_is_help=True)  # fmt: skip


def gateway_for(s: Session) -> GatewayClient | None:
    """The running gateway's admin client, or None when no gateway runs."""
    return running_gateway(default_socket(s.paths.runtime))


def _cache(s: Session) -> AdapterCache:
    from soulstone.lora.cache import AdapterCache

    return AdapterCache(s.paths.cache / "adapters")


def _list(s: Session) -> list[dict[str, Any]]:
    gateway = gateway_for(s)
    if gateway is not None:
        return list(gateway.call("GET", "/admin/lora")["adapters"])
    from soulstone.lora.registry import opened

    cache = _cache(s)
    with opened(s.paths.data) as registry:
        return [r.summary("warm" if cache.is_warm(r) else "cold") for r in registry.records()]


@lora_app.command("add")
def add(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="What clients ask for: letters, digits, . _ -")],
    path: Annotated[Path, typer.Argument(help="Folder with adapter_config.json and weights.")],
    base: Annotated[str, typer.Option("--base", help="The soulstone id serving its base model.")],
    any_base: Annotated[bool, typer.Option("--any-base", help="Skip the base check.")] = False,
) -> None:  # fmt: skip
    """Validate an adapter and store it in the registry (one transaction)."""
    s = session(ctx)
    gateway = gateway_for(s)
    if gateway is not None:  # the gateway checks it against its own codex
        record = guarded(ctx, lambda: _add_through(gateway, name, path, base, any_base))
    else:
        codex = guarded(ctx, s.load)
        record = guarded(ctx, lambda: store_adapter(s, codex, name, path, base, any_base))
    s.out.print(f"added {record['name']} (rank {record['rank']}, base {record['base']}, "
                f"{record['size']} bytes)", highlight=False)  # fmt: skip


def store_adapter(
    s: Session, codex: Codex, name: str, path: Path, base: str, any_base: bool = False
) -> dict[str, Any]:
    """Validate and store an adapter folder: through the gateway's admin API when it runs."""
    gateway = gateway_for(s)
    if gateway is not None:
        return _add_through(gateway, name, path, base, any_base)
    from soulstone.lora.adapter import check_name, inspect_adapter
    from soulstone.lora.registry import opened

    soulstone = codex.get(base)
    if soulstone is None:
        raise UsageError(f"no soulstone named {base!r}")
    with opened(s.paths.data) as registry:
        known = {r.name for r in registry.records()}
        info = inspect_adapter(check_name(name, codex, known), path, soulstone, any_base)
        return registry.add(info, path).summary("cold")


def _add_through(gateway: GatewayClient, name: str, path: Path, base: str,
                 any_base: bool) -> dict[str, Any]:  # fmt: skip
    body = {"name": name, "path": str(path.resolve()), "base": base, "any_base": any_base}
    return gateway.call("POST", "/admin/lora/add", body)


def adapter_names(s: Session) -> set[str]:
    """The names of the stored adapters (through the gateway when it runs)."""
    return {a["name"] for a in _list(s)}


@lora_app.command("list")
def list_(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for machines.")] = False,
) -> None:
    """Every adapter: base, rank, alpha, target modules, hash, size, created, state."""
    s = session(ctx)
    adapters = guarded(ctx, lambda: _list(s))
    if as_json:
        typer.echo(orjson.dumps({"adapters": adapters}, option=orjson.OPT_INDENT_2).decode())
        return
    from rich.table import Table

    table = Table(title="adapters", title_justify="left")
    for column in ("name", "base", "rank", "alpha", "modules", "size", "state"):
        table.add_column(column)
    for a in adapters:
        table.add_row(a["name"], a["base"], str(a["rank"]), f"{a['alpha']:g}",
                      ",".join(a["target_modules"]), str(a["size"]), a["state"])  # fmt: skip
    s.out.print(table)


@lora_app.command("show")
def show(ctx: typer.Context, name: Annotated[str, typer.Argument(help="An adapter.")]) -> None:
    """One adapter's record, as JSON."""
    s = session(ctx)
    adapters = {a["name"]: a for a in guarded(ctx, lambda: _list(s))}
    if name not in adapters:
        s.err.print(f"no adapter named {name!r}", style="red")
        raise typer.Exit(1)
    typer.echo(orjson.dumps(adapters[name], option=orjson.OPT_INDENT_2).decode())


@lora_app.command("rm")
def rm(ctx: typer.Context, name: Annotated[str, typer.Argument(help="An adapter.")]) -> None:
    """Remove an adapter (and its warm copy; unloaded first when hot)."""
    s = session(ctx)
    gateway = gateway_for(s)
    if gateway is not None:
        guarded(ctx, lambda: gateway.call("POST", "/admin/lora/rm", {"name": name}))
    else:

        def remove() -> None:
            from soulstone.lora.registry import opened

            with opened(s.paths.data) as registry:
                _cache(s).remove(registry.remove(name))

        guarded(ctx, remove)
    s.out.print(f"removed {name}")


def _through_gateway(ctx: typer.Context, path: str, name: str) -> dict[str, Any]:
    s = session(ctx)

    def call() -> dict[str, Any]:
        gateway = gateway_for(s)
        if gateway is None:
            raise SoulstoneError("no gateway runs: adapters are hot only in a gateway's engines")
        return gateway.call("POST", path, {"name": name})

    return guarded(ctx, call)


@lora_app.command("load")
def load(ctx: typer.Context, name: Annotated[str, typer.Argument(help="An adapter.")]) -> None:
    """Make an adapter hot now (through the running gateway)."""
    _through_gateway(ctx, "/admin/lora/load", name)
    session(ctx).out.print(f"{name} is hot")


@lora_app.command("unload")
def unload(ctx: typer.Context, name: Annotated[str, typer.Argument(help="An adapter.")]) -> None:
    """Unload an idle adapter (through the running gateway)."""
    answer = _through_gateway(ctx, "/admin/lora/unload", name)
    session(ctx).out.print(f"{name} {'unloaded' if answer['unloaded'] else 'was not hot'}")


@lora_app.command("watch")
def watch(
    ctx: typer.Context,
    folder: Annotated[Path, typer.Argument(help="Where a trainer writes adapter folders.")],
    base: Annotated[str, typer.Option("--base", help="The soulstone the adapters are for.")],
    interval: Annotated[float, typer.Option("--interval", help="Seconds between looks.")] = 2.0,
    any_base: Annotated[bool, typer.Option("--any-base", help="Skip the base check.")] = False,
) -> None:  # fmt: skip
    """Ingest adapters a trainer writes into FOLDER (validate, store, make hot), until Ctrl-C.

    A folder is taken once both files exist and nothing changed for one
    interval; its name is the adapter's name. Bad ones are reported and skipped.
    """
    from soulstone.lora.watch import Watcher

    s = session(ctx)
    watcher = Watcher(folder)
    s.err.print(f"watching {folder} for adapters of [{base}] (every {interval:g} s)")
    try:
        while True:
            for ready in watcher.ready():
                try:
                    _ingest(s, ready, base, any_base)
                except SoulstoneError as error:
                    s.err.print(f"[red]skipped {ready.name}:[/red] {error}", highlight=False)
            time.sleep(interval)
    except KeyboardInterrupt:
        return


def _ingest(s: Session, folder: Path, base: str, any_base: bool) -> None:
    name = folder.name
    gateway = gateway_for(s)
    if gateway is not None:
        known = {a["name"] for a in gateway.call("GET", "/admin/lora")["adapters"]}
        if name in known:
            gateway.call("POST", "/admin/lora/rm", {"name": name})
        body = {"name": name, "path": str(folder.resolve()), "base": base, "any_base": any_base}
        gateway.call("POST", "/admin/lora/add", body)
        gateway.call("POST", "/admin/lora/load", {"name": name})
        s.out.print(f"ingested {name}: hot in [{base}]", highlight=False)
        return
    from soulstone.lora.adapter import check_name, inspect_adapter
    from soulstone.lora.registry import opened

    codex = s.load()
    soulstone = codex.get(base)
    if soulstone is None:
        raise UsageError(f"no soulstone named {base!r}")
    info = inspect_adapter(check_name(name, codex, ()), folder, soulstone, any_base)
    with opened(s.paths.data) as registry:
        if registry.get(name) is not None:
            registry.remove(name)
        registry.add(info, folder)
    s.out.print(f"ingested {name}: stored (no gateway runs to make it hot)", highlight=False)


def register(app: typer.Typer) -> None:
    """Add the command group of this module (with `lora train`) to the application."""
    from soulstone.cli.lora_train import train

    lora_app.command("train")(train)
    app.add_typer(lora_app, name="lora")
