"""Per-client rate, token-rate and concurrency limits; the global parallel cap and queue."""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from soulstone.guard.clients import Client

WINDOW_S = 60.0


class Refused(Exception):
    """A limit says no: HTTP status, error code, message, and seconds worth waiting."""

    def __init__(self, status: int, code: str, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.retry_after = max(1, math.ceil(retry_after))


@dataclass
class _Usage:
    requests: deque[float] = field(default_factory=deque)
    tokens: deque[tuple[float, int]] = field(default_factory=deque)
    token_total: int = 0
    in_flight: int = 0

    def trim(self, now: float) -> None:
        while self.requests and now - self.requests[0] >= WINDOW_S:
            self.requests.popleft()
        while self.tokens and now - self.tokens[0][0] >= WINDOW_S:
            self.token_total -= self.tokens.popleft()[1]


class ClientLimiter:
    """Sliding one-minute windows and an in-flight count, per client."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._usage: dict[str, _Usage] = {}

    def admit(self, client: Client) -> None:
        """Count a new request, or raise Refused (429) naming the limit it breaks."""
        limits = client.limits
        usage = self._usage.setdefault(client.name, _Usage())
        now = self.clock()
        usage.trim(now)
        if limits.concurrent is not None and usage.in_flight >= limits.concurrent:
            message = (f"{client.name} already has {usage.in_flight} requests in flight "
                       f"(limit {limits.concurrent})")  # fmt: skip
            raise Refused(429, "CONCURRENCY_LIMITED", message, 1)
        rpm = limits.requests_per_minute
        if rpm is not None and len(usage.requests) >= rpm:
            message = (
                f"{client.name} sent {len(usage.requests)} requests in the last minute "
                f"(limit {rpm})"
            )
            raise Refused(429, "RATE_LIMITED", message, WINDOW_S - (now - usage.requests[0]))
        tpm = limits.tokens_per_minute
        if tpm is not None and usage.token_total >= tpm:
            wait = WINDOW_S - (now - usage.tokens[0][0]) if usage.tokens else WINDOW_S
            message = (
                f"{client.name} used {usage.token_total} tokens in the last minute (limit {tpm})"
            )
            raise Refused(429, "TOKEN_RATE_LIMITED", message, wait)
        usage.requests.append(now)
        usage.in_flight += 1

    def finish(self, client: Client, tokens: int) -> None:
        """A request of this client ended, having used this many tokens."""
        usage = self._usage.setdefault(client.name, _Usage())
        usage.in_flight = max(0, usage.in_flight - 1)
        if tokens > 0:
            usage.tokens.append((self.clock(), tokens))
            usage.token_total += tokens


class Slots:
    """At most `limit` requests in flight; up to `queue` more wait; beyond that, 503."""

    def __init__(self, limit: int, queue: int) -> None:
        self.limit = limit
        self.queue = queue
        self.in_flight = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def waiting(self) -> int:
        """Requests queued for a slot."""
        return len(self._waiters)

    async def acquire(self) -> None:
        """Take a slot, waiting in the bounded queue; Refused (503) when it is full."""
        if self.in_flight < self.limit and not self._waiters:
            self.in_flight += 1
            return
        if len(self._waiters) >= self.queue:
            raise Refused(503, "GATEWAY_BUSY", f"{self.in_flight} requests in flight and "
                          f"{len(self._waiters)} queued: try again shortly", 1)  # fmt: skip
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except BaseException:
            if waiter in self._waiters:
                self._waiters.remove(waiter)
            elif waiter.done() and not waiter.cancelled():
                self.release()  # the slot was handed over just as we gave up
            raise

    def release(self) -> None:
        """Give a slot back (to the first waiter, when there is one)."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self.in_flight -= 1
