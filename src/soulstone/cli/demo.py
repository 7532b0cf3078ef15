"""`soulstone demo`: two real tiny llama.cpp engines behind the gateway, swapped on demand."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import aiohttp
import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from soulstone.cli.app import Session, guarded, session
from soulstone.cli.ui import open_browser
from soulstone.codex.load import load_codex
from soulstone.codex.models import Codex
from soulstone.demo.artifacts import build_cache, ensure_llama_server, ensure_tiny_gguf
from soulstone.errors import SoulstoneError
from soulstone.gateway.serve import ServeOptions, serve
from soulstone.runtimes.state import StateFolder

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
    command = [binary, "-m", model, "-c", "512", "-t", "2", "--no-warmup"]
    tables = [
        "# Written by `soulstone demo`: two real llama.cpp engines with a tiny random model,\n"
        "# in two groups that may not run together, so asking the other one swaps them.\n"
    ]
    for name, group, address in (
        ("tiny-north", "north", f"port = {_free_port()}"),
        ("tiny-south", "south", f'socket = "{s.paths.state / "demo" / "south.sock"}"'),
    ):
        tables.append(
            f'[{group}.{name}]\nexec = {json.dumps(command)}\n{address}\nmodels = ["{name}"]\n'
            "health = { start_timeout = 60, interval = 0.1 }\n"
        )
    (folder / "demo.toml").write_text("\n".join(tables))
    return load_codex([folder], s.host())


async def _ask(socket_path: Path, model: str) -> tuple[dict[str, Any], float]:
    body = {"model": model, "max_tokens": 24,
            "messages": [{"role": "user", "content": QUESTION}]}  # fmt: skip
    began = time.monotonic()
    async with (
        aiohttp.ClientSession(
            connector=aiohttp.UnixConnector(path=str(socket_path)),
            timeout=aiohttp.ClientTimeout(total=120),
        ) as client,
        client.post("http://localhost/v1/chat/completions", json=body) as response,
    ):
        answer: dict[str, Any] = await response.json()
        if response.status != 200:
            raise SoulstoneError(f"the gateway answered {response.status}: {answer}")
        return answer, time.monotonic() - began


async def _open_dashboard(socket_path: Path) -> str:
    """The dashboard's URL (with its one-time token) from the demo's gateway."""
    async with (
        aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=str(socket_path))) as client,
        client.post("http://localhost/ui/open", json={}) as response,
    ):
        answer: dict[str, Any] = await response.json()
        if response.status != 200:
            raise SoulstoneError(f"the gateway would not open its dashboard: {answer}")
        return str(answer["url"])


async def _enter(s: Session, prompt: str, server: asyncio.Task[None]) -> None:
    """Wait for Enter on stdin (at once when stdin cannot be waited on, or the gateway ends)."""
    loop = asyncio.get_running_loop()
    pressed: asyncio.Future[None] = loop.create_future()
    try:
        fd = sys.stdin.fileno()
    except (OSError, ValueError):
        return

    def ready() -> None:
        loop.remove_reader(fd)
        with contextlib.suppress(OSError):
            os.read(fd, 4096)  # the line (or the end of the input)
        if not pressed.done():
            pressed.set_result(None)

    try:
        loop.add_reader(fd, ready)
    except (OSError, ValueError, NotImplementedError):  # a file or /dev/null: nothing to wait for
        return
    s.err.print(prompt, highlight=False)
    try:
        await asyncio.wait([pressed, server], return_when=asyncio.FIRST_COMPLETED)
    finally:
        loop.remove_reader(fd)


async def _through_gateway(
    s: Session, codex: Codex, state: StateFolder, socket_path: Path, ui: bool = False,
    open_it: bool = True,
) -> list[tuple[str, dict[str, Any], float]]:  # fmt: skip
    stop = asyncio.Event()
    ready = asyncio.Event()
    options = ServeOptions(socket=socket_path, clients=state.root / "clients.yaml",
                           own_socket_folder=False, max_wait=0.5)  # fmt: skip
    with (state.root / "gateway.log").open("a") as log:
        server = asyncio.create_task(serve(
            options, lambda: codex, state, ready=lambda _addresses: ready.set(), stop=stop,
            log_stream=log,
        ))  # fmt: skip
        try:
            await asyncio.wait_for(ready.wait(), 30)
            if ui:
                url = await _open_dashboard(socket_path)
                print(url, flush=True)
                if open_it:
                    open_browser(s, url)
                await _enter(s, "the dashboard is open: press Enter to ask the engines, and "
                             "watch them start and swap on its Timeline", server)  # fmt: skip
            answers = []
            for model in ("tiny-north", "tiny-south"):
                s.out.print(f"asking [bold]{model}[/bold] through the gateway "
                            f"(unix:{socket_path})...", highlight=False)  # fmt: skip
                answer, seconds = await _ask(socket_path, model)
                answers.append((model, answer, seconds))
            if ui:
                await _enter(s, "both answered: press Enter to stop the gateway and its engines "
                             "(the dashboard closes with it)", server)  # fmt: skip
            return answers
        finally:
            stop.set()
            await server


def demo(
    ctx: typer.Context,
    ui: Annotated[bool, typer.Option(
        "--ui", help="Open the dashboard first (its URL prints first on stdout) and wait for "
        "Enter, to watch the engines start and swap live.")] = False,
    no_open: Annotated[bool, typer.Option("--no-open", help="With --ui: print the URL only.")
                       ] = False,
) -> None:  # fmt: skip
    """Build (once) two tiny llama.cpp engines, and ask each through the gateway."""
    s = session(ctx)
    binary, model = guarded(ctx, lambda: _artifacts(s))
    codex = guarded(ctx, lambda: _codex(s, binary, model))
    state = StateFolder(s.paths.state / "demo")
    state.ensure()
    socket_path = s.paths.state / "demo" / "api.sock"
    answers = guarded(ctx, lambda: asyncio.run(_through_gateway(s, codex, state, socket_path,
                                                                ui, not no_open)))  # fmt: skip
    for name, answer, seconds in answers:
        reply = answer["choices"][0]["message"]["content"]
        usage = answer.get("usage", {})
        how = "started on demand" + (", swapping the other out" if name == "tiny-south" else "")
        s.out.print(f"[bold]{name}[/bold] answered in {seconds:.2f} s ({how}): {reply!r}",
                    highlight=False)  # fmt: skip
        s.out.print(f"  {usage.get('prompt_tokens')} prompt + {usage.get('completion_tokens')} "
                    "completion tokens", highlight=False)  # fmt: skip
    s.out.print(
        f"asked: {QUESTION!r}. The model is tiny and random, so the words mean nothing; the "
        "engines, the on-demand start, the swap and the round trips are real.", highlight=False,
    )  # fmt: skip
    logs = f"{state.root / 'logs'}, {state.root / 'gateway.log'}"
    s.out.print("the gateway stopped and took its engines with it: nothing left running. "
                f"Logs: {logs}", highlight=False)  # fmt: skip


def register(app: typer.Typer) -> None:
    """Add the commands of this module to the application."""
    app.command()(demo)
