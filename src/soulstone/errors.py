"""The exception tree every soulstone module raises from, and the Problem record."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


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
    """The codex is invalid; carries every problem found, and any warnings.

    `subject` names what was checked ("the codex", "the councils", or both),
    for the closing line of a report: "3 errors in the codex".
    """

    default_subject = "the codex"

    def __init__(
        self,
        problems: tuple[Problem, ...],
        warnings: tuple[Problem, ...] = (),
        subject: str | None = None,
    ) -> None:
        self.problems = problems
        self.warnings = warnings
        self.subject = subject or self.default_subject
        count = len(problems)
        lines = "\n".join(f"  {p}" for p in problems)
        super().__init__(f"{count} error{'s' if count != 1 else ''} in {self.subject}:\n{lines}")


class CouncilError(CodexError):
    """The council files are invalid (SPEC C8); every problem, each naming file, table, field."""

    default_subject = "the councils"


class Refusal(SoulstoneError):
    """A request refused: HTTP status, error code, message, Retry-After and extra body fields.

    Every way in (HTTP, WebSocket, council, admin) renders it through one table
    (`soulstone.dispatch.refusals`); `extra` lands in the error body as is.
    """

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        retry_after: float | None = None,
        headers: Mapping[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.retry_after = max(1, math.ceil(retry_after)) if retry_after else None
        self.headers = dict(headers or {})
        self.extra = extra


class ModelError(SoulstoneError):
    """A model artifact (SPEC C10) is missing, not the pinned one, damaged, or cannot be fetched.

    The message names the model and says what to do; the supervisor reports it
    as the failure of the soulstone that needs the model.
    """
