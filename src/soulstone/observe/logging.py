"""Structured JSON logs on stderr (never prompt or completion text)."""

from __future__ import annotations

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
    """One JSON line per request: ids, client, model, status, tokens, timings; no text."""

    def __init__(self, stream: Any = None) -> None:
        self.stream = stream or sys.stderr

    def write(self, **fields: Any) -> None:
        """Write one request's record (None values left out)."""
        record = {"event": "request", **{k: v for k, v in fields.items() if v is not None}}
        self.stream.write(orjson.dumps(record).decode() + "\n")
