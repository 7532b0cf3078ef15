"""`soulstone init`: write the commented starter codex, never over an existing one."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import typer

from soulstone.cli.app import guarded, session
from soulstone.errors import SoulstoneError, UsageError


def starter_codex() -> resources.abc.Traversable:
    """The bundled starter codex folder (the reference examples, commented)."""
    return resources.files("soulstone.codex").joinpath("starter")


def _one_folder(sources: list[Path]) -> Path:
    if len(sources) != 1:
        raise UsageError("init writes into one folder: pass a single --codex DIR")
    return sources[0]


def _write_starter(folder: Path) -> list[Path]:
    if folder.exists() and not folder.is_dir():
        raise SoulstoneError(f"{folder} exists and is not a folder")
    existing = sorted(folder.glob("*.toml")) if folder.is_dir() else []
    if existing:
        raise SoulstoneError(
            f"{folder} already holds a codex ({', '.join(p.name for p in existing)}); "
            "refusing to overwrite it"
        )
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for source in sorted(starter_codex().iterdir(), key=lambda t: t.name):
        if not source.name.endswith(".toml"):
            continue
        target = folder / source.name
        with target.open("x", encoding="utf-8") as handle:
            handle.write(source.read_text(encoding="utf-8"))
        written.append(target)
    return written


def init(ctx: typer.Context) -> None:
    """Write a commented starter codex into the codex folder (refuses to overwrite)."""
    s = session(ctx)
    sources, _ = s.sources()
    written = guarded(ctx, lambda: _write_starter(_one_folder(sources)))
    for path in written:
        s.out.print(f"wrote {path}", highlight=False)
    s.out.print("next: edit the files, then run `soulstone check`")


def register(app: typer.Typer) -> None:
    """Add the commands of this module to the application."""
    app.command()(init)
