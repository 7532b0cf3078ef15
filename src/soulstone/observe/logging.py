"""Structured JSON logs on stderr (never prompt or completion text)."""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import orjson
import structlog


def make_logger(name: str, stream: Any = None) -> Any:
    """A structlog logger writing one JSON object per line."""
    return structlog.wrap_logger(
        structlog.PrintLogger(stream or sys.stderr),
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.JSONRenderer(),
        ],
    ).bind(logger=name)


class RequestLog:
    """One JSON line per request: ids, client, model, status, tokens, timings; no text.

    Lines are gathered and written together a moment later (one write for
    many requests under load); `flush` writes what is pending.
    """

    DELAY_S = 0.05

    def __init__(self, stream: Any = None) -> None:
        self.stream = stream or sys.stderr
        self._pending: list[bytes] = []

    def write(self, **fields: Any) -> None:
        """Record one request (None values left out)."""
        record = {"event": "request", **{k: v for k, v in fields.items() if v is not None}}
        if not self._pending:
            try:
                asyncio.get_running_loop().call_later(self.DELAY_S, self.flush)
            except RuntimeError:
                self._pending.append(orjson.dumps(record))
                self.flush()
                return
        self._pending.append(orjson.dumps(record))

    def flush(self) -> None:
        """Write the pending lines."""
        if self._pending:
            lines, self._pending = self._pending, []
            self.stream.write(b"\n".join(lines).decode() + "\n")
            self.stream.flush()
