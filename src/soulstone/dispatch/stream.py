"""A streamed answer: its typed events in order, and a close that releases and settles once."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from types import TracebackType

from soulstone.dispatch.events import Event
from soulstone.dispatch.forward import Progress
from soulstone.errors import Refusal

Push = Callable[[Callable[[bytes], None]], Awaitable[Refusal | None]]


class Stream:
    """A streamed answer: its events in order; closing it releases the lease and settles.

    Use it as `async with stream:` so that a caller that goes away (or never
    reads) still releases everything.
    """

    def __init__(self, events: AsyncIterator[Event], close: Callable[[], None],
                 content_type: str, flat: bool, progress: Progress,
                 served_by: str | None = None, push: Push | None = None) -> None:  # fmt: skip
        self._events = events
        # Instead of the events, when set: `await push(write)` writes each chunk as it comes
        # (write must not raise) and returns the refusal that ended the stream, or None.
        self.push = push
        self.served_by = served_by  # the fallback soulstone streaming instead of the requested one
        self._close = close
        self.content_type = content_type
        self.flat = flat  # the caller's error shape, for Failure events
        # The transport sets `progress.writing` around each write and `progress.on_stall`:
        # a write that waits as long as the completion timeout cuts the caller.
        self.progress = progress

    def on_close(self, then: Callable[[], None]) -> None:
        """Also run `then` when the stream closes (after what closing did already)."""
        first = self._close

        def both() -> None:
            try:
                first()
            finally:
                then()

        self._close = both

    def __aiter__(self) -> AsyncIterator[Event]:
        return self._events

    async def aclose(self) -> None:
        """Stop reading the engine; release and settle (once)."""
        try:
            await self._events.aclose()  # type: ignore[attr-defined]
        finally:
            self._close()

    async def __aenter__(self) -> Stream:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:  # fmt: skip
        await self.aclose()
