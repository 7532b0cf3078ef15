"""Per-client rate, token-rate and concurrency limits; the global parallel cap and queue."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from soulstone.errors import Refusal
from soulstone.guard.clients import Client

WINDOW_S = 60.0


class Refused(Refusal):
    """A limit says no: HTTP status, error code, message, and seconds worth waiting."""

    def __init__(self, status: int, code: str, message: str, retry_after: float) -> None:
        super().__init__(status, code, message, retry_after=max(1.0, retry_after))


class Spend:
    """Tokens charged to a client at one moment: a reservation until settled."""

    __slots__ = ("at", "counted", "in_flight", "tokens")

    def __init__(self, at: float, tokens: int, in_flight: bool = True) -> None:
        self.at, self.tokens = at, tokens
        self.counted = True  # still inside the client's one-minute window
        self.in_flight = in_flight  # counted in the client's concurrency until settled


@dataclass
class _Usage:
    requests: deque[float] = field(default_factory=deque)
    spends: deque[Spend] = field(default_factory=deque)
    token_total: int = 0
    in_flight: int = 0

    def trim(self, now: float) -> None:
        while self.requests and now - self.requests[0] >= WINDOW_S:
            self.requests.popleft()
        while self.spends and now - self.spends[0].at >= WINDOW_S:
            spend = self.spends.popleft()
            spend.counted = False
            self.token_total -= spend.tokens


class ClientLimiter:
    """Sliding one-minute windows and an in-flight count, per client.

    Tokens per minute hold under concurrency: `admit` reserves a request's
    worst case at once, `settle` corrects it to what the engine reported.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._usage: dict[str, _Usage] = {}

    def check(self, client: Client, in_flight: bool = True) -> None:
        """Raise Refused (429) when a new request of this client would break a limit now.

        `in_flight=False`: a call inside a request already counted in flight
        (a council's persona): its concurrency is the council's.
        """
        limits = client.limits
        if (
            limits.concurrent is None
            and limits.requests_per_minute is None
            and (limits.tokens_per_minute is None)
        ):
            return
        usage = self._usage.setdefault(client.name, _Usage())
        now = self.clock()
        usage.trim(now)
        if in_flight and limits.concurrent is not None and usage.in_flight >= limits.concurrent:
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
            wait = WINDOW_S - (now - usage.spends[0].at) if usage.spends else WINDOW_S
            message = (f"{client.name} used or reserved {usage.token_total} tokens in the last "
                       f"minute (limit {tpm})")  # fmt: skip
            raise Refused(429, "TOKEN_RATE_LIMITED", message, wait)

    def in_flight(self, client: Client) -> int:
        """Requests of this client admitted and not yet settled."""
        usage = self._usage.get(client.name)
        return usage.in_flight if usage is not None else 0

    def tokens(self, client: Client) -> int:
        """Tokens this client used or holds reserved within the last minute."""
        usage = self._usage.get(client.name)
        if usage is None:
            return 0
        usage.trim(self.clock())
        return usage.token_total

    def admit(self, client: Client, reserve: int = 0, in_flight: bool = True) -> Spend:
        """Count a new request and reserve its worst-case tokens, or raise Refused (429).

        `in_flight=False` leaves the concurrency count alone (see `check`).
        """
        self.check(client, in_flight)
        usage = self._usage.setdefault(client.name, _Usage())
        now = self.clock()
        usage.requests.append(now)
        if in_flight:
            usage.in_flight += 1
        spend = Spend(now, max(0, reserve), in_flight)
        usage.spends.append(spend)
        usage.token_total += spend.tokens
        return spend

    def adjust(self, client: Client, spend: Spend, tokens: int) -> None:
        """Change a reservation (or a spend still in the window) to this many tokens."""
        usage = self._usage.get(client.name)
        tokens = max(0, tokens)
        if usage is not None and spend.counted:
            usage.token_total += tokens - spend.tokens
        spend.tokens = tokens

    def settle(self, client: Client, spend: Spend, tokens: int | None) -> None:
        """A request ended: free its concurrency slot; charge what it used (None: as reserved)."""
        usage = self._usage.setdefault(client.name, _Usage())
        if spend.in_flight:
            usage.in_flight = max(0, usage.in_flight - 1)
        if tokens is not None:
            self.adjust(client, spend, tokens)


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

    def try_acquire(self) -> bool:
        """Take a slot when one is free and nobody queues for it (no waiting); else False."""
        if self.in_flight < self.limit and not self._waiters:
            self.in_flight += 1
            return True
        return False

    async def acquire(self) -> None:
        """Take a slot, waiting in the bounded queue; Refused (503) when it is full."""
        if self.try_acquire():
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
