"""Structured JSON logs on stderr (never prompt or completion text)."""

from __future__ import annotations

import asyncio
import contextlib
import sys
from pathlib import Path
from typing import Any

import orjson
import structlog

from soulstone.files import RotatingLog

LOG_FILE_LIMIT = 16 * 2**20  # bytes before the gateway's log file is rotated (one old kept)
LOG_FILE_BUFFER = 8192  # characters gathered before a write when nobody flushes


class LogFile:
    """An append-only log file (0600) that rotates to `NAME.1` past a size.

    Text is gathered and handed to a `RotatingLog` (the engines' logs' rotation)
    at each flush, so a rotation falls between whole lines.
    """

    def __init__(self, path: Path, limit: int = LOG_FILE_LIMIT, keep: int = 1) -> None:
        self.path, self.limit = path, limit
        self._log = RotatingLog(path, limit, keep)
        self._pending: list[str] = []
        self._pending_size = 0

    def write(self, text: str) -> None:
        """Append text (written at the next flush, or once enough has gathered)."""
        self._pending.append(text)
        self._pending_size += len(text)
        if self._pending_size >= LOG_FILE_BUFFER:
            self.flush()

    def flush(self) -> None:
        """Hand what was written to the system."""
        if self._pending:
            text, self._pending, self._pending_size = "".join(self._pending), [], 0
            self._log.write(text.encode())

    def close(self) -> None:
        """Write what is left and close the file."""
        self.flush()
        self._log.close()


class Tee:
    """Writes to several streams at once (stderr and the log file)."""

    def __init__(self, *streams: Any) -> None:
        self.streams = streams

    def write(self, text: str) -> None:
        """Write to each stream (one that fails does not stop the others)."""
        for stream in self.streams:
            with contextlib.suppress(OSError, ValueError):
                stream.write(text)

    def flush(self) -> None:
        """Flush each stream."""
        for stream in self.streams:
            with contextlib.suppress(OSError, ValueError):
                stream.flush()


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
