"""`soulstone up`, `down`, `status` and `logs`: engines through the supervisor."""

from __future__ import annotations

import asyncio
import datetime
import os
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from soulstone.cli.app import Session, guarded, session
from soulstone.cli.gateway_client import GatewayClient, default_socket, running_gateway
from soulstone.codex.models import Codex, Soulstone
from soulstone.errors import UsageError
from soulstone.files import tail_lines
from soulstone.host import gpu_memory_by_pid
from soulstone.runtimes import procfs
from soulstone.runtimes.base import EngineStatus
from soulstone.runtimes.state import StateFolder
from soulstone.runtimes.table import make_runtimes
from soulstone.supervisor.plan import Plan, Target, name_target
from soulstone.supervisor.supervisor import Event, Supervisor

STATE_STYLES = {"running": "green", "starting": "yellow", "sleeping": "blue", "stopped": "dim",
                "failed": "bold red"}  # fmt: skip


def _supervisor(s: Session, codex: Codex, progress: EventView | None = None) -> Supervisor:
    state = StateFolder(s.paths.state)
    return Supervisor(codex, state, make_runtimes(state), on_event=progress)


class EventView:
    """Shows a manifestation's events: stop lines, and a bar per engine starting."""

    def __init__(self, s: Session) -> None:
        self.s = s
        self.progress = Progress(
            TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(),
            console=s.err, transient=False,
        )  # fmt: skip
        self.tasks: dict[str, TaskID] = {}

    def __call__(self, event: Event) -> None:
        """Render one event."""
        console = self.progress.console
        if event.kind == "stopping":
            console.print(f"stopping {event.soulstone} ({event.detail})", highlight=False)
        elif event.kind == "stopped":
            console.print(f"stopped {event.soulstone} in {event.elapsed:.1f} s", highlight=False)
        elif event.kind == "starting":
            self.tasks[event.soulstone] = self.progress.add_task(
                f"starting {event.soulstone}", total=event.timeout
            )
        elif event.kind == "waiting" and event.soulstone in self.tasks:
            self.progress.update(
                self.tasks[event.soulstone],
                completed=event.elapsed,
                description=f"waiting for {event.soulstone} to be healthy",
            )
        elif event.kind == "healthy":
            if event.soulstone in self.tasks:
                task = self.tasks[event.soulstone]
                self.progress.update(task, completed=event.timeout,
                                     description=f"{event.soulstone} healthy")  # fmt: skip
            console.print(f"{event.soulstone} is healthy ({event.elapsed:.1f} s)",
                          style="green", highlight=False)  # fmt: skip
        elif event.kind == "warmed":
            console.print(f"{event.soulstone} warmed up ({event.elapsed:.1f} s)",
                          style="green", highlight=False)  # fmt: skip
        elif event.kind == "warmup_failed":
            console.print(f"{event.soulstone}: the warm-up failed ({event.detail}); "
                          "it serves anyway", style="yellow", highlight=False)  # fmt: skip
        elif event.kind == "failed":
            console.print(f"{event.soulstone} failed: {event.detail}", style="red",
                          highlight=False)  # fmt: skip
        elif event.kind == "sleeping":
            console.print(f"putting {event.soulstone} to sleep ({event.detail})", highlight=False)
        elif event.kind in ("asleep", "awake"):
            console.print(f"{event.soulstone} is {event.kind} ({event.elapsed:.1f} s)",
                          highlight=False)  # fmt: skip
        elif event.kind in ("sleep_failed", "wake_failed"):
            verb = "go to sleep" if event.kind == "sleep_failed" else "wake up"
            console.print(f"{event.soulstone} did not {verb} ({event.detail}); "
                          "stopping it instead", style="yellow", highlight=False)  # fmt: skip


def _gateway(s: Session) -> GatewayClient | None:
    """The running gateway's admin client: when one runs, engines go through it."""
    return running_gateway(default_socket(s.paths.runtime))


def _status_from(record: dict[str, Any]) -> EngineStatus:
    since = record.get("since")
    moment = datetime.datetime.fromisoformat(since).timestamp() if since else None
    return EngineStatus(**(record | {"since": moment}))


def _up_through(
    ctx: typer.Context, gateway: GatewayClient, name: str | None, capability: str | None,
    dry_run: bool,
) -> None:  # fmt: skip
    s = session(ctx)
    body = {"name": name, "capability": capability, "dry_run": dry_run}
    if not dry_run:
        s.err.print(f"asking the gateway on {gateway.path} (it swaps when requests drain)...")
    answer = guarded(ctx, lambda: gateway.call("POST", "/admin/up", body))
    verb = ("would stop", "would start") if dry_run else ("stopped", "started")
    for stop in answer["stop"]:
        s.out.print(f"{verb[0]} {stop['id']}: {stop['reason']}", highlight=False)
    for started in answer["start"]:
        s.out.print(f"{verb[1]} {started}", highlight=False)
    if not answer["stop"] and not answer["start"]:
        s.out.print("already running: " + ", ".join(answer["targets"]), highlight=False)


def _target(codex: Codex, name: str | None, capability: str | None) -> Target:
    if (name is None) == (capability is None):
        raise UsageError("name exactly one of NAME (a soulstone or group) or --capability CAP")
    if capability is not None:
        return Target("capability", capability)
    assert name is not None
    return name_target(codex, name)


def _print_plan(s: Session, plan: Plan) -> None:
    if plan.noop:
        s.out.print("nothing to do: " + ", ".join(t.id for t in plan.targets) + " already run")
        return
    for stop in plan.stop:
        s.out.print(f"would stop {stop.soulstone.id}: {stop.reason}", highlight=False)
    for start in plan.start:
        s.out.print(f"would start {start.id} ({start.runtime}, {start.uri})", highlight=False)
    for kept in (t for t in plan.targets if t not in plan.start):
        s.out.print(f"already running: {kept.id}", highlight=False)


def up(
    ctx: typer.Context,
    name: Annotated[str | None, typer.Argument(help="A soulstone id or a group name.")] = None,
    capability: Annotated[
        str | None, typer.Option("--capability", metavar="CAP", help="Pick the group by tag.")
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Say what would stop and start, and why.")
    ] = False,
) -> None:
    """Manifest a soulstone or group: stop what conflicts, start it, wait until healthy."""
    s = session(ctx)
    codex = guarded(ctx, s.load)
    target = guarded(ctx, lambda: _target(codex, name, capability))
    gateway = _gateway(s)
    if gateway is not None:
        _up_through(ctx, gateway, name, capability, dry_run)
        return
    if dry_run:
        plan = guarded(ctx, lambda: asyncio.run(_supervisor(s, codex).plan(target)))
        _print_plan(s, plan)
        return
    view = EventView(s)
    supervisor = _supervisor(s, codex, view)
    with view.progress:
        plan = guarded(ctx, lambda: asyncio.run(supervisor.manifest(target)))
    if plan.noop:
        s.out.print("already running: " + ", ".join(t.id for t in plan.targets))
    for soulstone in plan.targets:
        s.out.print(f"{soulstone.id} is up at {soulstone.uri}", highlight=False)


def down(
    ctx: typer.Context,
    name: Annotated[
        str | None, typer.Argument(help="A soulstone id or group name (default: all).")
    ] = None,
) -> None:
    """Stop a soulstone, a group, or every running soulstone."""
    s = session(ctx)
    codex = guarded(ctx, s.load)
    target = guarded(ctx, lambda: name_target(codex, name)) if name is not None else None
    gateway = _gateway(s)
    if gateway is not None:
        answer = guarded(ctx, lambda: gateway.call("POST", "/admin/down", {"name": name}))
        stopped = list(answer["stopped"])
    else:
        supervisor = _supervisor(s, codex, EventView(s))
        stopped = guarded(ctx, lambda: asyncio.run(supervisor.down(target)))
    s.out.print("stopped " + ", ".join(stopped) if stopped else "nothing was running")


def _uptime(found: EngineStatus) -> str:
    if found.since is None or not found.active:
        return ""
    seconds = int(time.time() - found.since)
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else (
        f"{seconds // 60}m{seconds % 60:02d}s"
    )  # fmt: skip


def _with_gpu(found: list[EngineStatus]) -> list[EngineStatus]:
    used = gpu_memory_by_pid()
    if not used:
        return found

    def total(pid: int) -> int:
        return sum(used.get(p, 0) for p in (pid, *procfs.descendants(pid)))

    return [replace(st, gpu_memory_bytes=total(st.pid)) if st.pid else st for st in found]


def status(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for machines.")] = False,
) -> None:
    """Show every soulstone's state, pid or unit, uptime, address, health and GPU memory."""
    s = session(ctx)
    codex = guarded(ctx, s.load)
    gateway = _gateway(s)
    reload: dict[str, Any] | None = None
    if gateway is not None:
        answer = guarded(ctx, lambda: gateway.call("GET", "/admin/status"))
        found = _with_gpu([_status_from(record) for record in answer["soulstones"]])
        reload = answer.get("reload")
    else:
        found = _with_gpu(guarded(ctx, lambda: asyncio.run(_supervisor(s, codex).statuses())))
    if as_json:
        document: dict[str, Any] = {"soulstones": [f.summary() for f in found]}
        if reload is not None:
            document["reload"] = reload
        typer.echo(orjson.dumps(document, option=orjson.OPT_INDENT_2).decode())
        return
    table = Table(title="soulstone status", title_justify="left")
    containers = any(st.container for st in found)
    columns = ("id", "state", "pid/unit", "uptime", "port/socket", "health", "GPU memory")
    for column in (*columns, *(("container",) if containers else ())):
        table.add_column(column, overflow="fold")
    for st in found:
        failed_with = st.state == "failed" and st.exit_code is not None
        state = st.state + (f" (exit {st.exit_code})" if failed_with else "")
        memory = f"{st.gpu_memory_bytes / 2**30:.1f} GiB" if st.gpu_memory_bytes else "—"
        container = f"{st.container} ({st.container_state or '?'})" if st.container else ""
        table.add_row(
            Text(st.id, style="bold"), Text(state, style=STATE_STYLES[st.state]),
            st.unit or (str(st.pid) if st.pid else ""), _uptime(st),
            st.socket or (str(st.port) if st.port else ""), st.health or "", memory,
            *((container,) if containers else ()),
        )  # fmt: skip
    s.out.print(table)
    _print_reasons(s, found, reload)


def _print_reasons(s: Session, found: list[EngineStatus], reload: dict[str, Any] | None) -> None:
    """Why soulstones are failed or restarting, and why the last reload failed (if it did)."""
    for st in found:
        if st.reason:
            s.out.print(Text(f"{st.id}: ", style="bold") + Text(st.reason), highlight=False)
    if reload is not None and not reload.get("reloaded"):
        moment = datetime.datetime.fromtimestamp(reload["at"]).strftime("%Y-%m-%d %H:%M:%S")
        s.out.print(Text(f"the last reload failed ({moment}): {reload.get('why')}; the running "
                         "codex stays", style="bold red"), highlight=False)  # fmt: skip
        for error in reload.get("errors", []):
            where = " ".join(str(error[k]) for k in ("file", "table", "field") if error.get(k))
            s.out.print(f"  {where + ': ' if where else ''}{error.get('message')}",
                        highlight=False, markup=False)  # fmt: skip


def _one_soulstone(codex: Codex, name: str) -> Soulstone:
    found = codex.get(name)
    if found is None:
        target = name_target(codex, name)
        raise UsageError(f"{target.name!r} is a group: name one of its soulstones")
    return found


def logs(
    ctx: typer.Context,
    name: Annotated[str | None, typer.Argument(help="A soulstone id.")] = None,
    follow: Annotated[
        bool, typer.Option("-f", "--follow", help="Keep printing new lines.")
    ] = False,
    lines: Annotated[int, typer.Option("-n", "--lines", help="How many lines to show.")] = 200,
    gateway: Annotated[
        bool, typer.Option("--gateway", help="The gateway's own JSON log instead.")
    ] = False,
) -> None:
    """Print a soulstone's engine log (process runtime: its log file; quadlet: the journal)."""
    s = session(ctx)
    if gateway == (name is not None):
        guarded(ctx, lambda: _usage("name a soulstone, or give --gateway (not both)"))
    if gateway:
        _print_log(s, StateFolder(s.paths.state).gateway_log, "the gateway", lines, follow)
        return
    assert name is not None
    codex = guarded(ctx, s.load)
    soulstone = guarded(ctx, lambda: _one_soulstone(codex, name))
    state = StateFolder(s.paths.state)
    runtime = make_runtimes(state)[soulstone.runtime]
    command = runtime.log_command(soulstone, follow)
    if command is not None:
        raise typer.Exit(subprocess.call([*command, "-n", str(lines)]))
    _print_log(s, state.log(soulstone.id), soulstone.id, lines, follow)


def _usage(message: str) -> None:
    raise UsageError(message)


def _print_log(s: Session, path: Path, whose: str, lines: int, follow: bool) -> None:
    """The last lines of a log file, then (following) what is added, across a rotation."""
    if not path.exists():
        s.err.print(f"no log yet for {whose} ({path})")
        raise typer.Exit(1)
    try:
        print(tail_lines(path, lines), flush=True)
        if follow:
            _follow(path)
    except KeyboardInterrupt:
        return  # Ctrl-C ends a follow: not an error


def _follow(path: Path) -> None:
    handle = path.open("rb")
    handle.seek(0, os.SEEK_END)
    try:
        while True:
            chunk = handle.read()
            if chunk:
                sys.stdout.write(chunk.decode(errors="replace"))
                sys.stdout.flush()
                continue
            try:
                rotated = os.stat(path).st_ino != os.fstat(handle.fileno()).st_ino
            except FileNotFoundError:
                rotated = False
            if rotated:  # the file was rotated: read the new one from its start
                handle.close()
                handle = path.open("rb")
            else:
                time.sleep(0.3)
    finally:
        handle.close()


def register(app: typer.Typer) -> None:
    """Add the commands of this module to the application."""
    app.command()(up)
    app.command()(down)
    app.command()(status)
    app.command()(logs)
