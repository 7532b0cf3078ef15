"""`soulstone init`: write the commented starter codex, never over an existing one."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import typer

from soulstone.cli.app import guarded, session
from soulstone.cli.council_files import CouncilsOption
from soulstone.council.load import councils_source
from soulstone.errors import SoulstoneError, UsageError


def starter_codex() -> resources.abc.Traversable:
    """The bundled starter codex folder (the reference examples, commented)."""
    return resources.files("soulstone.codex").joinpath("starter")


def starter_councils() -> resources.abc.Traversable:
    """The bundled starter council folder (one council on the starter codex's models)."""
    return resources.files("soulstone.council").joinpath("starter")


def _one_folder(sources: list[Path]) -> Path:
    if len(sources) != 1:
        raise UsageError("init writes into one folder: pass a single --codex DIR")
    return sources[0]


def _existing(folder: Path) -> list[Path]:
    if folder.exists() and not folder.is_dir():
        raise SoulstoneError(f"{folder} exists and is not a folder")
    return sorted(folder.glob("*.toml")) if folder.is_dir() else []


def _write_starter(folder: Path, starter: resources.abc.Traversable) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for source in sorted(starter.iterdir(), key=lambda t: t.name):
        if not source.name.endswith(".toml"):
            continue
        target = folder / source.name
        with target.open("x", encoding="utf-8") as handle:
            handle.write(source.read_text(encoding="utf-8"))
        written.append(target)
    return written


def _write_codex(folder: Path) -> list[Path]:
    existing = _existing(folder)
    if existing:
        raise SoulstoneError(
            f"{folder} already holds a codex ({', '.join(p.name for p in existing)}); "
            "refusing to overwrite it"
        )
    return _write_starter(folder, starter_codex())


def init(ctx: typer.Context, councils: CouncilsOption = None) -> None:
    """Write a commented starter codex (and a starter council) into their folders.

    Refuses to overwrite a codex; a council folder that holds files is left as it is.
    """
    s = session(ctx)
    sources, _ = s.sources()
    written = guarded(ctx, lambda: _write_codex(_one_folder(sources)))
    council_folder = councils_source(councils, s.paths)[0]
    if guarded(ctx, lambda: _existing(council_folder)):
        s.out.print(f"kept the council files in {council_folder}", highlight=False)
    else:
        written += guarded(ctx, lambda: _write_starter(council_folder, starter_councils()))
    for path in written:
        s.out.print(f"wrote {path}", highlight=False)
    s.out.print("next: edit the files, then run `soulstone check`")


def register(app: typer.Typer) -> None:
    """Add the commands of this module to the application."""
    app.command()(init)
