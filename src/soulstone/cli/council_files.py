"""The council files for CLI commands: where they are, the adapters they may name, loading.

Shared by `check`, `serve`, `init` and `council`: the codex and the councils
are checked together so that every problem of both comes at once.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from soulstone.cli.app import Session
from soulstone.cli.gateway_client import running_gateway
from soulstone.codex.models import Codex
from soulstone.council.load import council_files, councils_source, load_council_files
from soulstone.council.models import Councils
from soulstone.errors import CodexError, CouncilError, Problem, SoulstoneError
from soulstone.paths import Paths

if TYPE_CHECKING:  # the registry module imports ZODB: only when adapters are read
    from soulstone.lora.registry import AdapterRecord

MemoryUrlOption = Annotated[
    str | None,
    typer.Option(
        "--memory-url",
        metavar="URL",
        envvar="SOULSTONE_MEMORY_URL",
        help="A Qdrant server holding the councils' resonance memory, in place of the "
        "embedded store in $XDG_DATA_HOME/soulstone/memory/.",
    ),
]
CouncilsOption = Annotated[
    Path | None,
    typer.Option(
        "--councils",
        metavar="PATH",
        help="A council file or folder of *.toml "
        "(default: $XDG_CONFIG_HOME/soulstone/councils/; absent: no councils).",
    ),
]


def _record(summary: dict[str, Any]) -> AdapterRecord:
    """An adapter record from a gateway's `lora list` summary (name, base and shape only)."""
    from soulstone.lora.registry import AdapterRecord

    return AdapterRecord(
        summary["name"], summary["base"], int(summary["rank"]), float(summary["alpha"]),
        tuple(summary["target_modules"]), "", {}, int(summary["size"]), created=0.0,
    )  # fmt: skip


def adapter_records(paths: Paths, socket: Path) -> dict[str, AdapterRecord]:
    """The registered LoRA adapters by name: from the running gateway, else the registry.

    A gateway that keeps no registry, and a machine with no registry file,
    have none. The registry is only read, never created.
    """
    gateway = running_gateway(socket)
    if gateway is not None:
        try:
            answer = gateway.call("GET", "/admin/lora")
        except SoulstoneError:
            return {}  # the gateway runs without an adapter registry
        return {a["name"]: _record(a) for a in answer.get("adapters", [])}
    if not (paths.data / "adapters.fs").exists():
        return {}
    from soulstone.lora.registry import opened

    with opened(paths.data) as registry:
        return {r.name: r for r in registry.records()}


def _subject(codex_failed: bool, councils_failed: bool) -> str:
    if codex_failed and councils_failed:
        return "the codex and the councils"
    return "the councils" if councils_failed else "the codex"


def load_checked(
    s: Session, given: Path | None, socket: Path, load: Callable[[], Codex] | None = None
) -> tuple[Codex, Councils]:
    """The codex and the councils, both valid; CodexError with every problem of both if not.

    `load` loads the codex (default: the session's loader). Without council
    files (an absent default folder) the councils are empty.
    A `--councils` path that does not exist is a UsageError.
    """
    source, named = councils_source(given, s.paths)
    files = council_files(source, named)
    problems: list[Problem] = []
    warnings: list[Problem] = []
    codex: Codex | None = None
    try:
        codex = (load or s.load)()
    except CodexError as error:
        problems += error.problems
        warnings += error.warnings
    codex_failed = bool(problems)
    councils = Councils()
    councils_failed = False
    if files:
        adapters = adapter_records(s.paths, socket)
        try:
            councils = load_council_files(files, codex, adapters)
            warnings += councils.warnings
        except CouncilError as error:
            problems += error.problems
            warnings += error.warnings
            councils_failed = True
    if problems or codex is None:
        if codex is not None:
            warnings = [*codex.warnings, *warnings]
        raise CodexError(tuple(problems), tuple(warnings), _subject(codex_failed, councils_failed))
    return codex, councils
