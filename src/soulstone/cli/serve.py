"""`soulstone serve`: the gateway."""

from __future__ import annotations

import os
import sys
from collections.abc import Collection
from pathlib import Path
from typing import Annotated

import typer

from soulstone.cli.app import guarded, session
from soulstone.cli.council_files import CouncilsOption, MemoryUrlOption, load_checked
from soulstone.cli.gateway_client import SOCKET_ENV, default_socket
from soulstone.codex.models import Codex
from soulstone.council.load import council_files, councils_source, load_council_files
from soulstone.council.models import Councils
from soulstone.errors import SoulstoneError
from soulstone.forge.strict import strict_loader
from soulstone.gateway.serve import ServeOptions, serve
from soulstone.observe.logging import LogFile, Tee
from soulstone.observe.trace import traces_target
from soulstone.runtimes.state import StateFolder
from soulstone.supervisor.restarts import RestartPolicy


def _run(coroutine: object) -> None:
    import asyncio

    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        asyncio.run(coroutine)  # type: ignore[arg-type]
        return
    uvloop.run(coroutine)  # type: ignore[arg-type]


def serve_command(
    ctx: typer.Context,
    socket: Annotated[
        Path | None,
        typer.Option(
            "--socket",
            metavar="PATH",
            help="Unix socket to listen on (default: $XDG_RUNTIME_DIR/soulstone/api.sock).",
        ),
    ] = None,
    tcp: Annotated[
        str | None,
        typer.Option("--tcp", metavar="HOST:PORT", help="Also listen on TCP (off by default)."),
    ] = None,
    tcp_public: Annotated[
        bool,
        typer.Option(
            "--tcp-public",
            help="Allow a --tcp address beyond loopback (needs a clients file with an API key).",
        ),
    ] = False,
    strict: Annotated[
        bool, typer.Option("--strict", help="Unix sockets only: refuse TCP.")
    ] = False,
    max_wait: Annotated[
        float,
        typer.Option(
            "--max-wait",
            help="Seconds a running group keeps taking requests "
            "while another group waits for a swap.",
        ),
    ] = 2.0,
    clients: Annotated[
        Path | None,
        typer.Option(
            "--clients",
            metavar="PATH",
            help="The clients file (default: $XDG_CONFIG_HOME/soulstone/clients.yaml).",
        ),
    ] = None,
    tools: Annotated[
        Path | None,
        typer.Option(
            "--tools",
            metavar="PATH",
            help="The tools policy "
            "(default: $XDG_CONFIG_HOME/soulstone/tools.yaml, else built in).",
        ),
    ] = None,
    max_parallel: Annotated[
        int | None, typer.Option("--max-parallel", help="Requests in flight at once (16).")
    ] = None,
    queue: Annotated[
        int | None, typer.Option("--queue", help="Requests that may wait for a slot (64).")
    ] = None,
    timeout: Annotated[
        float | None, typer.Option("--timeout", help="Completion timeout in seconds (45).")
    ] = None,
    idle_check: Annotated[
        float, typer.Option("--idle-check", hidden=True, help="Seconds between ttl checks.")
    ] = 5.0,
    drain_timeout: Annotated[
        float,
        typer.Option(
            "--drain-timeout",
            help="Seconds in-flight requests get to finish before their engine is swapped out.",
        ),
    ] = 30.0,
    header_timeout: Annotated[
        float,
        typer.Option(
            "--header-timeout",
            min=0.01,
            help="Seconds a connection gets to send a request's headers before it is closed.",
        ),
    ] = 10.0,
    idle_timeout: Annotated[
        float,
        typer.Option(
            "--idle-timeout",
            min=0.01,
            help="Seconds an idle keep-alive connection stays open.",
        ),
    ] = 30.0,
    max_connections_per_peer: Annotated[
        int,
        typer.Option(
            "--max-connections-per-peer",
            min=1,
            help="Connections one Unix user (or one TCP address) may hold; more are closed.",
        ),
    ] = 256,
    councils: CouncilsOption = None,
    metrics_socket: Annotated[
        Path | None,
        typer.Option(
            "--metrics-socket",
            metavar="PATH",
            help="Also serve /metrics and /health (nothing else, no identity) on this Unix socket.",
        ),
    ] = None,
    metrics_group: Annotated[
        str | None,
        typer.Option(
            "--metrics-group",
            metavar="GROUP",
            help="The group given the --metrics-socket (mode 0660), e.g. prometheus's.",
        ),
    ] = None,
    metrics_tcp: Annotated[
        str | None,
        typer.Option(
            "--metrics-tcp",
            metavar="HOST:PORT",
            help="Also serve /metrics and /health on this loopback address (not with --strict).",
        ),
    ] = None,
    memory_url: MemoryUrlOption = None,
    restart_limit: Annotated[
        int,
        typer.Option(
            "--restart-limit",
            min=1,
            help="Failures (deaths or failed starts) within --restart-window that mark a "
            "soulstone failed: its requests get 503 ENGINE_FAILED until `soulstone up`.",
        ),
    ] = 3,
    restart_window: Annotated[
        float,
        typer.Option(
            "--restart-window",
            min=1,
            help="Seconds the failures are counted over (and a failed mark lasts).",
        ),
    ] = 300.0,
    restart_backoff: Annotated[
        float,
        typer.Option(
            "--restart-backoff",
            min=0.0,
            help="Seconds before the first restart of "
            "an engine that died; doubled for each failure after, up to 30.",
        ),
    ] = 0.5,
    otlp_endpoint: Annotated[
        str | None,
        typer.Option(
            "--otlp-endpoint",
            metavar="URL",
            help="Send OpenTelemetry traces to this OTLP/HTTP collector, e.g. "
            "http://127.0.0.1:4318 (also OTEL_EXPORTER_OTLP_ENDPOINT; off by default).",
        ),
    ] = None,
) -> None:
    """Serve the OpenAI-compatible gateway on a Unix socket (and TCP when asked)."""
    s = session(ctx)
    otlp = guarded(ctx, lambda: traces_target(otlp_endpoint, os.environ))
    listen = socket or default_socket(s.paths.runtime)
    load = strict_loader(s.load, s.paths.runtime) if strict else s.load
    _, declared = guarded(ctx, lambda: load_checked(s, councils, listen, load))
    source, named = councils_source(councils, s.paths)

    def reload_councils(codex: Codex, adapters: Collection[str]) -> Councils:
        files = council_files(source, named)
        return load_council_files(files, codex, adapters) if files else Councils()

    options = ServeOptions(
        socket=listen, councils=declared, reload_councils=reload_councils,
        clients=clients or s.paths.config / "clients.yaml",
        max_parallel=max_parallel, queue=queue, timeout=timeout,
        adapters=s.paths.data, adapter_cache=s.paths.cache / "adapters",
        capture=s.paths.data / "capture",
        tools=tools or s.paths.config / "tools.yaml",
        own_socket_folder=socket is None and not os.environ.get(SOCKET_ENV),
        tcp=tcp, tcp_public=tcp_public, strict=strict, max_wait=max_wait,
        drain_timeout=drain_timeout,
        idle_check=idle_check, header_timeout=header_timeout, idle_timeout=idle_timeout,
        max_connections_per_peer=max_connections_per_peer,
        metrics_socket=metrics_socket, metrics_group=metrics_group, metrics_tcp=metrics_tcp,
        memory=s.paths.memory, memory_url=memory_url,
        otlp=otlp, restarts=RestartPolicy(backoff=restart_backoff, limit=restart_limit,
                                          window=restart_window),
    )  # fmt: skip
    state = StateFolder(s.paths.state)

    def ready(addresses: list[str]) -> None:
        s.err.print("soulstone gateway listening on " + ", ".join(addresses), highlight=False)

    state.ensure()
    log_file = LogFile(state.gateway_log)  # what `soulstone logs --gateway` reads
    try:
        guarded(ctx, lambda: _run(serve(options, load, state, ready,
                                        log_stream=Tee(sys.stderr, log_file))))  # fmt: skip
    finally:
        log_file.close()


def reload(ctx: typer.Context) -> None:
    """Ask the running gateway to read its codex and clients file again (like SIGHUP)."""
    from soulstone.cli.gateway_client import running_gateway

    s = session(ctx)
    gateway = running_gateway(default_socket(s.paths.runtime))
    if gateway is None:
        s.err.print("no gateway answers on " + str(default_socket(s.paths.runtime)), style="red")
        raise typer.Exit(1)
    try:
        answer = gateway.call("POST", "/admin/reload")
    except SoulstoneError as error:
        s.err.print(f"[red]reload refused:[/red] {error}", highlight=False)
        raise typer.Exit(1) from None
    s.out.print(f"reloaded; changed: {', '.join(answer.get('changed', [])) or 'nothing'}")


def register(app: typer.Typer) -> None:
    """Add the commands of this module to the application."""
    app.command("serve")(serve_command)
    app.command("reload")(reload)
