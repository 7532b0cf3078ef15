"""When to restart an engine that died or failed to start, and when to give up (pure).

Each soulstone has a `Failures` record. A failure (a death, or a start that
did not become healthy) is either followed by a restart after a backoff
(`Retry`: `backoff` seconds, doubled for each failure since the engine last
answered a request, up to `backoff_max`, less up to `jitter` of it at
random), or, when it is the `limit`-th failure within `window` seconds, by a
failed mark (`GiveUp`): requests are refused at once until the mark ends
(`window` seconds later) or an operator clears it (`soulstone up`).

The time and the random draw are passed in; nothing here waits or logs.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

from soulstone.errors import Refusal


@dataclass(frozen=True)
class RestartPolicy:
    """How the gateway restarts engines: backoff bounds and the failure limit."""

    backoff: float = 0.5  # seconds before the first restart
    backoff_max: float = 30.0
    jitter: float = 0.2  # each delay loses up to this share of itself, at random
    limit: int = 3  # failures within `window` that mark a soulstone failed
    window: float = 300.0

    def delay(self, step: int, draw: float) -> float:
        """Seconds before restart number `step` (1 for the first); `draw` is in [0, 1)."""
        doubled = self.backoff * 2.0 ** min(max(step - 1, 0), 62)
        return min(self.backoff_max, doubled) * (1.0 - self.jitter * draw)


@dataclass(frozen=True)
class Mark:
    """A soulstone marked failed: why, and when the mark ends (on the caller's clock)."""

    reason: str
    until: float


@dataclass(frozen=True)
class Retry:
    """Restart after `delay` seconds."""

    delay: float


@dataclass(frozen=True)
class GiveUp:
    """Too many failures: the soulstone is marked failed."""

    mark: Mark


Verdict = Retry | GiveUp


class Failures:
    """One soulstone's recent failures: their times, the backoff step, its mark (if any)."""

    __slots__ = ("mark", "step", "times")

    def __init__(self) -> None:
        self.times: deque[float] = deque()
        self.step = 0  # failures since the engine last answered a request
        self.mark: Mark | None = None

    def record(self, policy: RestartPolicy, now: float, reason: str, draw: float) -> Verdict:
        """Count a failure at `now`; what follows it: a restart after a delay, or the mark."""
        while self.times and now - self.times[0] >= policy.window:
            self.times.popleft()
        self.times.append(now)
        self.step += 1
        if len(self.times) >= policy.limit:
            count = len(self.times)
            why = f"{count} failure{'s' if count != 1 else ''} within {policy.window:g} s; last: "
            self.mark = Mark(why + reason, now + policy.window)
            self.times.clear()
            self.step = 0
            return GiveUp(self.mark)
        return Retry(policy.delay(self.step, draw))

    def marked(self, now: float) -> Mark | None:
        """The mark in force at `now` (a mark whose time has passed is dropped)."""
        if self.mark is not None and now >= self.mark.until:
            self.mark = None
        return self.mark

    def answered(self) -> None:
        """The engine answered a request: the next failure waits the shortest backoff again."""
        self.step = 0


RETRY_AFTER_S = 5


class Unavailable(Refusal):
    """A request's engine could not be brought up in time (503 ENGINE_UNAVAILABLE)."""

    def __init__(self, message: str, retry_after: int = RETRY_AFTER_S) -> None:
        super().__init__(503, "ENGINE_UNAVAILABLE", message, retry_after=retry_after)


class EngineFailed(Refusal):
    """Requests for a soulstone marked failed (503 ENGINE_FAILED, with Retry-After)."""

    def __init__(self, soulstone_id: str, mark: Mark, now: float) -> None:
        wait = max(1, math.ceil(round(mark.until - now, 6)))  # no float fuzz: 300.00000001
        super().__init__(
            503, "ENGINE_FAILED", f"{soulstone_id} is marked failed ({mark.reason}); it is not "
            f"started again for {wait} s, or until `soulstone up {soulstone_id}`",
            retry_after=wait, soulstone=soulstone_id,
        )  # fmt: skip
        self.soulstone_id = soulstone_id


class OutOfMemory(Refusal):
    """The engine ran out of memory, answering or starting (503 ENGINE_OUT_OF_MEMORY)."""

    def __init__(self, soulstone_id: str, when: str, retry_after: float = RETRY_AFTER_S) -> None:
        super().__init__(
            503, "ENGINE_OUT_OF_MEMORY", f"{soulstone_id} ran out of memory {when}; free "
            "memory (or lower its context or batch size) and try again",
            retry_after=retry_after, soulstone=soulstone_id,
        )  # fmt: skip
