"""`soulstone ui`: open the running gateway's dashboard (a loopback URL with a one-time token)."""

from __future__ import annotations

import os
import sys
import webbrowser
from typing import Annotated

import typer

from soulstone.cli.app import Session, guarded, session
from soulstone.cli.gateway_client import default_socket, running_gateway


def has_graphical_browser(environ: dict[str, str] | None = None) -> bool:
    """Whether opening a browser here would show a window (not take over this terminal)."""
    env = os.environ if environ is None else environ
    if env.get("BROWSER"):
        return True
    if sys.platform == "darwin":
        return True
    return bool(env.get("DISPLAY") or env.get("WAYLAND_DISPLAY"))


def ui(
    ctx: typer.Context,
    port: Annotated[int | None, typer.Option("--port", min=1, max=65535,
                                             help="The loopback port (default: a free one).")
                    ] = None,
    no_open: Annotated[bool, typer.Option("--no-open", help="Print the URL only.")] = False,
    allow_strict: Annotated[bool, typer.Option(
        "--allow-strict", help="Open it even on a strict gateway (admin clients; audit flags it).",
    )] = False,
) -> None:  # fmt: skip
    """Open the dashboard of the running gateway: prints its URL (with a one-time token) first."""
    s = session(ctx)
    path = default_socket(s.paths.runtime)
    gateway = running_gateway(path)
    if gateway is None:
        s.err.print(f"no gateway answers on {path}: start one with `soulstone serve`",
                    style="red", highlight=False)  # fmt: skip
        raise typer.Exit(1)
    body = {"port": port, "allow_strict": allow_strict}
    answer = guarded(ctx, lambda: gateway.call("POST", "/ui/open", body, timeout=30))
    url = str(answer["url"])
    print(url, flush=True)
    role = "admin: may act" if answer.get("admin") else "view only"
    s.err.print(f"the dashboard of {path}, as {answer.get('client')} ({role}); the token "
                "works once, in one browser", highlight=False)  # fmt: skip
    if not no_open:
        open_browser(s, url)


def open_browser(s: Session, url: str) -> None:
    """Open the URL in a browser when one would show a window; else say to open it."""
    if not has_graphical_browser():
        s.err.print("no graphical browser here: open the URL above yourself", highlight=False)
        return
    try:
        webbrowser.open(url)
    except (webbrowser.Error, OSError) as error:
        s.err.print(f"could not open a browser ({error}): open the URL above yourself",
                    highlight=False)  # fmt: skip


def register(app: typer.Typer) -> None:
    """Add the commands of this module to the application."""
    app.command("ui")(ui)
