"""Structured JSON logs on stderr (never prompt or completion text)."""

from __future__ import annotations

import sys
from typing import Any

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
