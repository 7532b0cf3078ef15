"""`soulstone demo`: a real tiny llama.cpp engine, started through soulstone, answering."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from typing import Any

import aiohttp
import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from soulstone.cli.app import Session, guarded, session
from soulstone.cli.engines import EventView
from soulstone.codex.load import load_codex
from soulstone.codex.models import Codex, Soulstone
from soulstone.demo.artifacts import build_cache, ensure_llama_server, ensure_tiny_gguf
from soulstone.runtimes.state import StateFolder
from soulstone.runtimes.table import make_runtimes
from soulstone.supervisor.plan import Target
from soulstone.supervisor.supervisor import Supervisor

QUESTION = "Name three things a soulstone keeps apart."


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _artifacts(s: Session) -> tuple[str, str]:
    cache = build_cache()
    progress = Progress(
        TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(), console=s.err
    )
    with progress:
        task = progress.add_task("llama-server (built once, a few minutes)", total=1.0)

        def report(step: str, fraction: float) -> None:
            progress.update(task, description=step, completed=fraction)

        binary = ensure_llama_server(cache, report)
        progress.update(task, description=f"llama-server ready ({binary})", completed=1.0)
        model = ensure_tiny_gguf(cache)
    return str(binary), str(model)


def _codex(s: Session, binary: str, model: str) -> Codex:
    folder = s.paths.state / "demo" / "codex"
    folder.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    command = [binary, "-m", model, "-c", "512", "-t", "2", "--no-warmup"]
    (folder / "demo.toml").write_text(
        "# Written by `soulstone demo`: one real llama.cpp engine with a tiny random model.\n"
        f"[tiny]\nexec = {json.dumps(command)}\nport = {port}\n"
        "health = { start_timeout = 60, interval = 0.1 }\n"
    )
    return load_codex([folder], s.host())


async def _ask(soulstone: Soulstone) -> dict[str, Any]:
    body = {"model": soulstone.models[0], "max_tokens": 24,
            "messages": [{"role": "user", "content": QUESTION}]}  # fmt: skip
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as client,
        client.post(f"{soulstone.uri}/chat/completions", json=body) as response,
    ):
        response.raise_for_status()
        answer: dict[str, Any] = await response.json()
        return answer


async def _manifest_ask_stop(supervisor: Supervisor, soulstone: Soulstone) -> dict[str, Any]:
    await supervisor.manifest(Target("soulstone", soulstone.id))
    try:
        return await _ask(soulstone)
    finally:
        await supervisor.down()


def demo(ctx: typer.Context) -> None:
    """Build (once) and start a real tiny llama.cpp engine through soulstone, and ask it."""
    s = session(ctx)
    binary, model = guarded(ctx, lambda: _artifacts(s))
    codex = guarded(ctx, lambda: _codex(s, binary, model))
    [soulstone] = codex.soulstones
    state = StateFolder(s.paths.state / "demo")
    view = EventView(s)
    supervisor = Supervisor(codex, state, make_runtimes(state), on_event=view)
    s.out.print(f"starting [bold]{soulstone.id}[/bold] ({soulstone.engine}) at {soulstone.uri}")
    began = time.monotonic()
    with view.progress:
        answer = guarded(ctx, lambda: asyncio.run(_manifest_ask_stop(supervisor, soulstone)))
    reply = answer["choices"][0]["message"]["content"]
    usage = answer.get("usage", {})
    s.out.print(f"[bold]asked:[/bold] {QUESTION}", highlight=False)
    s.out.print(f"[bold]answered:[/bold] {reply!r}", highlight=False)
    s.out.print(
        f"{usage.get('prompt_tokens')} prompt + {usage.get('completion_tokens')} completion "
        f"tokens, {time.monotonic() - began:.1f} s from start to stop. The model is tiny and "
        "random, so the words mean nothing; the engine, the swap and the round trip are real.",
        highlight=False,
    )
    s.out.print(f"stopped {soulstone.id}: nothing left running. Logs: {state.log(soulstone.id)}")


def register(app: typer.Typer) -> None:
    """Add the commands of this module to the application."""
    app.command()(demo)
