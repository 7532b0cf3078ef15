"""What one call holds (a Lease, released in reverse) and what its settlement needs (a Record)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from soulstone.dispatch.capture import Captured
from soulstone.guard.clients import Client
from soulstone.observe.trace import Attribute, Notes


class Record:
    """What settlement needs to know about one request, gathered along the path."""

    __slots__ = (
        "began", "capture", "client", "code", "completion_tokens", "content", "council", "events",
        "first_at", "forwarded", "heartbeat", "model", "persona", "prompt_tokens",
        "reported_prompt", "request_id", "session_id", "settled", "total_tokens", "trace", "way",
    )  # fmt: skip

    def __init__(self, request_id: str, session_id: str | None, way: str) -> None:
        self.began = time.perf_counter()
        self.request_id, self.session_id, self.way = request_id, session_id, way
        self.client: Client | None = None
        self.model: str | None = None
        self.code: str | None = None
        self.content: Any = None
        self.prompt_tokens: int | None = None
        self.total_tokens: int | None = None
        self.events = 0
        self.forwarded = False
        self.heartbeat: str | None = None  # the session's chain key, when it has a session
        self.settled = False
        self.council: str | None = None
        self.persona: str | None = None
        self.reported_prompt: int | None = None  # the engine's usage, when it gave one
        self.completion_tokens: int | None = None
        self.first_at: float | None = None  # perf_counter() at a stream's first chunk
        self.trace: Notes | None = None  # the request's trace notes, only while tracing is on
        self.capture: Captured | None = None  # an opted-in client's chat, kept for training

    def reported(self, usage: tuple[int | None, int | None, int | None]) -> None:
        """Keep the engine's reported usage (prompt, completion, total)."""
        self.reported_prompt, self.completion_tokens, self.total_tokens = usage

    def span_attributes(self, status: int) -> dict[str, Attribute]:
        """The request span's attributes: ids, caller, model, outcome, tokens (never text)."""
        found: dict[str, Attribute | None] = {
            "request_id": self.request_id, "conveyance_session_id": self.session_id,
            "client": self.client.name if self.client else None, "model": self.model,
            "way": self.way, "status": status, "error_code": self.code,
            "council": self.council, "persona": self.persona,
            "prompt_tokens": self.reported_prompt or self.prompt_tokens,
            "completion_tokens": self.completion_tokens, "total_tokens": self.total_tokens,
        }  # fmt: skip
        return {key: value for key, value in found.items() if value is not None}

    def used_tokens(self) -> int:
        """Tokens to charge: the engine's report, else prompt + streamed events, else none."""
        if self.total_tokens is not None:
            return self.total_tokens
        if self.forwarded:
            return (self.prompt_tokens or 0) + self.events
        return 0


class Lease(list[Callable[[], None]]):
    """Everything one call acquired: `hold` how to give each back; `release` does, once.

    Releases run in reverse order (last acquired first); one that fails stops
    no other.
    """

    __slots__ = ()

    hold = list.append  # remember how to give back what was just acquired

    def release(self) -> None:
        """Give everything back, last acquired first (then the lease is empty)."""
        self.release_to(0)

    def release_to(self, count: int) -> None:
        """Give back what was acquired after the first `count` holds, last acquired first."""
        releases = self[count:][::-1]
        del self[count:]
        failed: BaseException | None = None
        for release in releases:
            try:
                release()
            except Exception as error:  # every release runs; the first error is raised after
                failed = failed or error
        if failed is not None:
            raise failed
