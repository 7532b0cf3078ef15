"""The exception tree every soulstone module raises from, and the Problem record."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, order=True)
class Problem:
    """One finding about the codex: where it is (file, table, field) and what it is."""

    file: str
    table: str
    field: str
    message: str

    def __str__(self) -> str:
        where = self.file
        if self.table:
            where += f": [{self.table}]"
        if self.field:
            where += f" {self.field}"
        return f"{where}: {self.message}"

    def as_dict(self) -> dict[str, str]:
        """Return the JSON shape used by `check --json`."""
        return {
            "file": self.file,
            "table": self.table,
            "field": self.field,
            "message": self.message,
        }


class SoulstoneError(Exception):
    """Root of every error soulstone raises on purpose."""


class UsageError(SoulstoneError):
    """The command line asked for something impossible (CLI exit code 2)."""


class CodexError(SoulstoneError):
    """The codex is invalid; carries every problem found, and any warnings."""

    def __init__(self, problems: tuple[Problem, ...], warnings: tuple[Problem, ...] = ()) -> None:
        self.problems = problems
        self.warnings = warnings
        count = len(problems)
        lines = "\n".join(f"  {p}" for p in problems)
        super().__init__(f"the codex has {count} error{'s' if count != 1 else ''}:\n{lines}")
