"""Read the council files from disk: find them, parse, validate against the codex."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from pathlib import Path

from soulstone.codex.load import read_toml_text
from soulstone.codex.models import Codex
from soulstone.council.models import Councils
from soulstone.council.parse import Declared, parse_councils
from soulstone.council.validate import resolve_councils
from soulstone.errors import CouncilError, Problem, UsageError
from soulstone.paths import Paths


def councils_source(given: Path | None, paths: Paths) -> tuple[Path, bool]:
    """Where the councils come from: `--councils PATH`, else the XDG folder.

    The flag says whether the user named the path (True) or it defaulted.
    """
    if given is not None:
        return given, True
    return paths.councils, False


def council_files(source: Path, named: bool) -> list[Path]:
    """The `*.toml` files of a folder in name order, or the one file named.

    An absent default folder means no councils; a path the user named must exist.
    """
    if source.is_dir():
        return sorted(
            p for p in source.iterdir() if p.suffix == ".toml" and not p.name.startswith(".")
        )
    if source.is_file():
        return [source]
    if named:
        raise UsageError(f"councils path {source} does not exist")
    return []


def _read(file: Path) -> tuple[list[Declared], list[Problem]]:
    text = read_toml_text(file)
    if isinstance(text, Problem):
        return [], [text]
    return parse_councils(text, str(file))


def load_council_files(
    files: Sequence[Path], codex: Codex | None, adapters: Collection[str]
) -> Councils:
    """Parse and validate these files as one set; raise CouncilError with every problem.

    `codex` None (an invalid codex) skips the checks of model names.
    """
    declared: list[Declared] = []
    problems: list[Problem] = []
    for file in files:
        found, file_problems = _read(file)
        declared += found
        problems += file_problems
    councils, found_problems, warnings = resolve_councils(declared, codex, adapters)
    problems += found_problems
    if problems:
        raise CouncilError(tuple(sorted(problems)), warnings)
    return councils


def load_councils(
    source: Path, codex: Codex | None, adapters: Collection[str], *, named: bool = True
) -> Councils:
    """Load the councils of a folder (or one file); raise CouncilError or UsageError.

    An absent default folder gives an empty Councils: councils are optional.
    """
    return load_council_files(council_files(source, named), codex, adapters)
