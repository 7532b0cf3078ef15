"""The settle step's capture hook: what an opted-in client's chat exchange leaves behind.

Only the bytes as they pass are kept (the request's messages, the answer's
body or its stream's chunks); the capture log parses them in its own thread.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Any

from soulstone.dispatch.events import Chunk, Event
from soulstone.lora.capture import CaptureLog


class Captured:
    """One exchange being captured: the messages asked, then the answer's bytes."""

    __slots__ = ("body", "chunks", "messages", "model", "streamed")

    def __init__(self, messages: Any, model: str | None) -> None:
        self.messages, self.model = messages, model
        self.body: bytes | None = None
        self.chunks: list[bytes] = []
        self.streamed = False

    async def tap(self, events: AsyncGenerator[Event, None]) -> AsyncGenerator[Event, None]:
        """The stream's events, unchanged, keeping a copy of each chunk's bytes."""
        self.streamed = True
        try:
            async for event in events:
                if isinstance(event, Chunk):
                    self.chunks.append(event.data)
                yield event
        finally:
            await events.aclose()  # the engine's side ends now, not when collected

    def settle(self, log: CaptureLog | None, client: str | None) -> None:
        """Hand the exchange to the capture log (it writes it, when it holds text to learn)."""
        if log is not None and client is not None:
            log.append(client, self.messages, self.model, self.body, self.chunks, self.streamed)
