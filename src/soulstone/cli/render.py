"""Rich rendering of codex tables, conflicts, problems and warnings."""

from __future__ import annotations

from collections.abc import Iterable

from rich.console import Console
from rich.table import Table
from rich.text import Text

from soulstone.codex.models import Codex, Soulstone
from soulstone.errors import Problem


def _groups(s: Soulstone) -> str | Text:
    """Its groups; else `remote` (conflicts with nothing) or `solitary`."""
    return ", ".join(s.groups) or Text("remote" if s.remote else "solitary", style="dim")


def _models(s: Soulstone) -> str | Text:
    """Its model names, or a note that a discovering remote's are read at run time."""
    if s.discover:
        return Text("discovered at run time", style="dim")
    return ", ".join(s.models)


def _address(s: Soulstone) -> str:
    """Where the gateway reaches it (a remote's address as parsed: it never holds a key)."""
    return s.address.display() if s.address is not None else s.uri


def codex_table(codex: Codex) -> Table:
    """A table of the soulstones: id, unit, groups, engine, runtime, URI, models, capabilities.

    A remote has no unit (`-`), shows `remote` where it is in no group, and
    `discovered at run time` for `models = "discover"`.
    """
    table = Table(title="soulstones", title_justify="left")
    for column in ("id", "unit", "groups", "engine", "runtime", "URI", "models", "capabilities"):
        table.add_column(column, overflow="fold")
    for s in codex.soulstones:
        table.add_row(
            Text(s.id, style="bold"),
            Text("-", style="dim") if s.remote else s.unit,
            _groups(s),
            s.engine,
            s.runtime,
            _address(s),
            _models(s),
            ", ".join(s.capabilities),
        )
    return table


def conflicts_text(codex: Codex) -> Text:
    """The conflict pairs, one per line, or a line saying there are none."""
    if not codex.conflicts:
        return Text("no conflicts: every soulstone may run at once")
    text = Text(f"conflicts ({len(codex.conflicts)} pairs; never run together):\n")
    for a, b in codex.conflicts:
        text.append(f"  {a} ⟷ {b}\n")
    return text


def print_problems(console: Console, problems: Iterable[Problem], kind: str, style: str) -> None:
    """Print each problem on its own line, prefixed with its kind."""
    for problem in problems:
        line = Text(f"{kind}: ", style=style)
        line.append(str(problem))
        console.print(line, soft_wrap=True, highlight=False)
