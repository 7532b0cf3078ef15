"""One council run's resonance memory: recall for each round, remember each round's answers.

The question is embedded as the run begins (alongside routing); before each
round the session's nearest memories are recalled for the members, after
waiting for the previous round's answers to be stored, so a round after a
veto sees the answers before it. A failure (embedding refused, store error)
never fails the run: it is recorded in the result's `memory` field and
logged by its type only, never its text.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from soulstone.council.embed import EmbeddingFailed, embed
from soulstone.council.memory import Remembered, ResonanceMemory
from soulstone.council.models import Council, Memory
from soulstone.dispatch.call import Call
from soulstone.dispatch.path import RequestPath


class SessionMemory:
    """The memory of one run of a council with `memory`, for a request with a session id."""

    def __init__(self, memory: ResonanceMemory, path: RequestPath, council: Council,
                 settings: Memory, call: Call, session: str) -> None:  # fmt: skip
        self.memory = memory
        self.path = path
        self.council = council
        self.settings = settings
        self.call = call
        self.session = session
        self.recalled = 0
        self.stored = 0
        self.error: str | None = None
        self._question: asyncio.Task[list[float] | None] | None = None
        self._storing: asyncio.Task[None] | None = None

    def document(self) -> dict[str, Any]:
        """The result's `memory` field: memories given to members, answers stored, any error."""
        return {"recalled": self.recalled, "stored": self.stored, "error": self.error}

    def _failed(self, error: Exception) -> None:
        if self.error is None:
            known = isinstance(error, EmbeddingFailed)  # its message starts with its code
            self.error = str(error) if known else f"MEMORY_STORE_FAILED: {error}"
        self.path.log.warning("council memory failed", council=self.council.name,
                              error=type(error).__name__)  # fmt: skip

    async def _embed(self, texts: Sequence[str], suffix: str) -> list[list[float]]:
        return await embed(self.path, self.call, self.council.name, self.settings.embed_model,
                           texts, f"{self.call.request_id}.{suffix}",
                           self.council.timeout_s)  # fmt: skip

    def begin(self, question: str) -> None:
        """Start embedding the question (an empty question recalls nothing)."""
        if question.strip():
            self._question = asyncio.create_task(self._embed_question(question))

    async def _embed_question(self, question: str) -> list[float] | None:
        try:
            [vector] = await self._embed([question], "memory")
        except Exception as error:
            self._failed(error)
            return None
        return vector

    async def recall(self) -> tuple[str, ...]:
        """The session's memories nearest the question, for this round's members."""
        if self._question is None:
            return ()
        vector = await self._question
        await self._stored()
        if vector is None:
            return ()
        try:
            found = await self.memory.recall(self.council.name, self.session, vector,
                                             self.settings.top_k)  # fmt: skip
        except Exception as error:
            self._failed(error)
            return ()
        self.recalled += len(found)
        return tuple(found)

    def remember(self, number: int, answers: Sequence[tuple[str, str]]) -> None:
        """Start storing a round's (persona, answer) pairs, after any store still running."""
        kept = [(persona, text) for persona, text in answers if text.strip()]
        if kept:
            self._storing = asyncio.create_task(self._store(number, kept, self._storing))

    async def _store(self, number: int, answers: list[tuple[str, str]],
                     before: asyncio.Task[None] | None) -> None:  # fmt: skip
        if before is not None:
            await before
        try:
            vectors = await self._embed([text for _, text in answers], f"memory{number}")
            items = [Remembered(persona, number, text, vector)
                     for (persona, text), vector in zip(answers, vectors, strict=True)]  # fmt: skip
            self.stored += await self.memory.store(self.council.name, self.session, items)
        except Exception as error:
            self._failed(error)

    async def _stored(self) -> None:
        if self._storing is not None:
            await self._storing

    async def finish(self) -> dict[str, Any]:
        """Wait for the last round's answers to be stored; the result's `memory` field."""
        await self._stored()
        return self.document()

    def close(self) -> None:
        """Stop waiting for what is still running (a run that ended early or was cancelled)."""
        for task in (self._question, self._storing):
            if task is not None and not task.done():
                task.cancel()


def session_memory(memory: ResonanceMemory | None, path: RequestPath, council: Council,
                   call: Call) -> SessionMemory | None:  # fmt: skip
    """A run's memory: only for a council with `memory` and a request with a session id."""
    if memory is None or council.memory is None or not call.session_id:
        return None
    return SessionMemory(memory, path, council, council.memory, call, call.session_id)
