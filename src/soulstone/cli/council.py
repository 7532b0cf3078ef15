"""`soulstone council list|check|plan|run|forget`: councils, their problems, waves and memory."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer
from rich.table import Table
from rich.text import Text

from soulstone.cli.app import Session, guarded, session
from soulstone.cli.council_files import (
    CouncilsOption,
    MemoryUrlOption,
    adapter_records,
    load_checked,
)
from soulstone.cli.gateway_client import (
    GatewayClient,
    default_socket,
    error_message,
    running_gateway,
)
from soulstone.codex.models import Codex
from soulstone.council.load import councils_source
from soulstone.council.models import Council, Councils
from soulstone.council.plan import Wave, plan_waves
from soulstone.errors import SoulstoneError, UsageError

council_app = typer.Typer(help="Councils: many personas asked at once (declared in TOML).",
                          no_args_is_help=True)  # fmt: skip


def _load(ctx: typer.Context, councils: CouncilsOption) -> tuple[Codex, Councils]:
    s = session(ctx)
    return guarded(ctx, lambda: load_checked(s, councils, default_socket(s.paths.runtime)))


def _router(council: Council) -> str:
    router = council.router
    text: str = router.kind
    if router.kind == "model" and router.persona:
        text += f" ({router.persona})"
    elif router.kind == "rules":
        text += f" ({len(council.rules)})"
    if router.max_personas is not None and router.kind != "all":
        text += f", at most {router.max_personas}"
    return text


@council_app.command("list")
def list_(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for machines.")] = False,
    councils: CouncilsOption = None,
) -> None:
    """Every council: personas, router, aggregator, veto and memory."""
    s = session(ctx)
    _, declared = _load(ctx, councils)
    if as_json:
        typer.echo(orjson.dumps(declared.summary(), option=orjson.OPT_INDENT_2).decode())
        return
    table = Table(title="councils", title_justify="left")
    for column in ("council", "personas", "router", "aggregator", "veto", "memory"):
        table.add_column(column, overflow="fold")
    for name, council in declared.councils.items():
        memory = council.memory
        table.add_row(
            Text(name, style="bold"), ", ".join(council.personas), _router(council),
            council.aggregator, council.veto or Text("none", style="dim"),
            f"{memory.embed_model} (top {memory.top_k})" if memory else Text("off", style="dim"),
        )  # fmt: skip
    s.out.print(table)
    if not declared.councils:
        s.out.print(f"no councils declared in {councils_source(councils, s.paths)[0]}",
                    highlight=False)  # fmt: skip


@council_app.command("check")
def check(ctx: typer.Context, councils: CouncilsOption = None) -> None:
    """Validate the council files against the codex and the adapters (exit 1 listing problems)."""
    from soulstone.cli.render import print_problems

    s = session(ctx)
    codex, declared = _load(ctx, councils)
    print_problems(s.err, declared.warnings, "warning", "yellow")
    count, personas = len(declared.councils), len(declared.personas)
    files = len(set(declared.files.values()))
    s.out.print(
        f"councils OK: {count} council{'s' if count != 1 else ''}, {personas} persona"
        f"{'s' if personas != 1 else ''} in {files} file{'s' if files != 1 else ''}, "
        f"checked against {len(codex.soulstones)} soulstones",
        highlight=False,
    )


def _running(s: Session, codex: Codex) -> set[str]:
    """Ids of the soulstones running now: from the gateway when one runs, else the runtimes."""
    gateway = running_gateway(default_socket(s.paths.runtime))
    if gateway is not None:
        answer = gateway.call("GET", "/admin/status")
        return {r["id"] for r in answer["soulstones"] if r["state"] in ("running", "starting")}
    from soulstone.runtimes.state import StateFolder
    from soulstone.runtimes.table import make_runtimes
    from soulstone.supervisor.supervisor import Supervisor

    state = StateFolder(s.paths.state)
    supervisor = Supervisor(codex, state, make_runtimes(state))
    found = asyncio.run(supervisor.statuses(check_health=False))
    return {st.id for st in found if st.active}


def _waves(s: Session, codex: Codex, declared: Councils, name: str) -> list[Wave]:
    council = declared.council(name)
    if council is None:
        known = ", ".join(declared.councils) or "none"
        raise UsageError(f"no council named {name!r} (declared: {known})")
    adapters = adapter_records(s.paths, default_socket(s.paths.runtime))
    after = [p for n in (council.aggregator, council.veto) if n and (p := declared.persona(n))]
    return plan_waves(declared.members(council), codex, adapters, _running(s, codex), after)


@council_app.command("plan")
def plan(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="A council's name.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for machines.")] = False,
    councils: CouncilsOption = None,
) -> None:
    """The waves a council's personas are asked in: soulstones that conflict never share one."""
    s = session(ctx)
    codex, declared = _load(ctx, councils)
    waves = guarded(ctx, lambda: _waves(s, codex, declared, name))
    if as_json:
        document = {"waves": [w.summary() for w in waves]}
        typer.echo(orjson.dumps(document, option=orjson.OPT_INDENT_2).decode())
        return
    table = Table(title=f"council {name}: {len(waves)} wave{'s' if len(waves) != 1 else ''}",
                  title_justify="left")  # fmt: skip
    for column in ("wave", "personas", "soulstones", "why"):
        table.add_column(column, overflow="fold")
    for number, wave in enumerate(waves, start=1):
        table.add_row(str(number), ", ".join(wave.personas), ", ".join(wave.soulstones), wave.why)
    s.out.print(table)


class _Board:
    """The live table of a council run: each persona's state, tokens and time."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.rows: dict[str, list[str]] = {}
        self.notes: list[str] = []
        self.final: list[str] = []

    def routed(self, data: dict[str, Any]) -> None:
        for persona in data["personas"]:
            self.rows[persona] = [persona, "", f"asking (round {data['round']})", "", ""]
        if data.get("fallback"):
            self.notes.append(f"router fell back to every persona: {data['fallback']}")

    def answered(self, data: dict[str, Any]) -> None:
        tokens = data.get("completion_tokens")
        state = "answered" if data.get("error") is None else f"failed: {data['error']}"
        self.rows[data["persona"]] = [data["persona"], data["model"], state,
                                      "" if tokens is None else str(tokens),
                                      f"{data['ms']:.0f}"]  # fmt: skip

    def table(self) -> Table:
        table = Table(title=f"council {self.name}", title_justify="left")
        for column in ("persona", "model", "state", "tokens", "ms"):
            table.add_column(column, overflow="fold")
        for row in self.rows.values():
            table.add_row(*row)
        for note in self.notes:
            table.add_row("", "", Text(note, style="dim"), "", "")
        return table


def _run_live(s: Session, gateway: GatewayClient, name: str, question: str) -> None:
    """Ask with the event stream, showing the personas live; then print the final answer."""
    from rich.live import Live

    board = _Board(name)
    failure: str | None = None
    body = {"messages": [{"role": "user", "content": question}], "stream": True}
    with Live(board.table(), console=s.err, refresh_per_second=8, transient=False) as live:
        for event, data in gateway.events(f"/v1/council/{name}", body):
            if event == "routed":
                board.routed(data)
            elif event == "answer":
                board.answered(data)
            elif event == "draft":
                board.notes.append(f"round {data['round']}: {data['persona']} drafted")
            elif event == "veto":
                board.notes.append(
                    f"round {data['round']}: {data['verdict']}"
                    + (f" ({data['reason']})" if data.get("reason") else "")
                )
            elif event == "final":
                board.final.append(data["content"])
            elif event == "message" and "error" in data:
                failure = error_message(data, "the council failed")
            live.update(board.table())
    if failure is not None:
        raise SoulstoneError(f"council {name!r} failed: {failure}")
    s.out.print("".join(board.final), highlight=False, markup=False)


@council_app.command("run")
def run(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="A council's name.")],
    question: Annotated[str, typer.Argument(help="The question to ask it.")],
    as_json: Annotated[bool, typer.Option(
        "--json", help="Print the result object of POST /v1/council/NAME.")] = False,
) -> None:  # fmt: skip
    """Ask a council of the running gateway; show each persona live, then the answer."""
    s = session(ctx)
    where = default_socket(s.paths.runtime)
    gateway = running_gateway(where)
    if gateway is None:
        guarded(ctx, lambda: _no_gateway(where))
        return
    if as_json:
        body = {"messages": [{"role": "user", "content": question}]}
        result = guarded(ctx, lambda: gateway.call("POST", f"/v1/council/{name}", body))
        typer.echo(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode())
        return
    guarded(ctx, lambda: _run_live(s, gateway, name, question))


def _forget(s: Session, session_id: str, memory_url: str | None) -> dict[str, Any]:
    """Forget through the running gateway (it holds the store's lock), else open the store here."""
    gateway = running_gateway(default_socket(s.paths.runtime))
    if gateway is not None:
        return gateway.call("POST", "/admin/memory/forget", {"session": session_id})
    from soulstone.council.memory import forget_session

    forgotten = forget_session(s.paths.memory, memory_url, session_id)
    return {"session": session_id, "forgotten": forgotten,
            "where": memory_url or str(s.paths.memory)}  # fmt: skip


@council_app.command("forget")
def forget(
    ctx: typer.Context,
    session_id: Annotated[str, typer.Argument(
        metavar="SESSION", help="The session id (X-Conveyance-Session-ID) to forget.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for machines.")] = False,
    memory_url: MemoryUrlOption = None,
) -> None:  # fmt: skip
    """Delete a session's resonance memories in every council (through the gateway when it runs)."""
    s = session(ctx)
    if not session_id:
        guarded(ctx, _empty_session)
    result = guarded(ctx, lambda: _forget(s, session_id, memory_url))
    if as_json:
        typer.echo(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode())
        return
    count = result["forgotten"]
    s.out.print(f"forgot {count} memor{'y' if count == 1 else 'ies'} of session {session_id!r} "
                f"({result['where']})", highlight=False, markup=False)  # fmt: skip


def _empty_session() -> None:
    raise UsageError("SESSION is empty: give the session id to forget")


def _no_gateway(where: Path) -> None:
    raise UsageError(f"no gateway answers on {where}: start one with `soulstone serve` "
                     f"(or set $SOULSTONE_SOCKET)")  # fmt: skip


def register(app: typer.Typer) -> None:
    """Add the command group of this module to the application."""
    app.add_typer(council_app, name="council")
