"""What a streamed answer is made of: typed events, in order, then the end."""

from __future__ import annotations

from dataclasses import dataclass

from soulstone.errors import Refusal


@dataclass(frozen=True, slots=True)
class Chunk:
    """Whole server-sent events from the engine, as bytes to pass on unchanged."""

    data: bytes


@dataclass(frozen=True, slots=True)
class ToolCall(Chunk):
    """Events carrying one or more whole, validated tool calls (never partial JSON)."""


@dataclass(frozen=True, slots=True)
class Failure:
    """The stream broke (engine died, timed out, a tool call was invalid); nothing follows."""

    refusal: Refusal


@dataclass(frozen=True, slots=True)
class Done:
    """The engine's stream ended; `total_tokens` is its reported usage when it gave one."""

    total_tokens: int | None


Event = Chunk | Failure | Done
