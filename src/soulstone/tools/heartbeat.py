"""Heartbeat chains per session (pure, with a clock): rate, cool-down, depth, duration.

A response carrying a tool call with `request_heartbeat: true` opens (or
continues) the session's chain; the session's next request is then a
heartbeat request of that chain; a response without such a call ends it.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from soulstone.errors import Refusal
from soulstone.tools.policy import HeartbeatLimits

WINDOW_S = 1.0
MAX_CHAINS = 10_000


class HeartbeatRefused(Refusal):
    """A heartbeat request over a limit (429): its code, message, and seconds worth waiting."""

    def __init__(self, code: str, message: str, retry_after: float = 0.0) -> None:
        super().__init__(429, code, message, retry_after=retry_after if retry_after > 0 else None)


@dataclass
class _Chain:
    started: float
    depth: int = 0
    recent: deque[float] = field(default_factory=deque)
    cooldown_until: float = 0.0


@dataclass
class Heartbeats:
    """The open chains, by session."""

    clock: Callable[[], float]
    chains: dict[str, _Chain] = field(default_factory=dict)

    def admit(self, session: str, limits: HeartbeatLimits) -> bool:
        """Check a request; True when it is a heartbeat request (counted), else False."""
        chain = self.chains.get(session)
        if chain is None:
            return False
        now = self.clock()
        if now < chain.cooldown_until:
            message = "heartbeat requests of this session cool down after going too fast"
            raise HeartbeatRefused("HEARTBEAT_COOLDOWN", message, chain.cooldown_until - now)
        while chain.recent and now - chain.recent[0] >= WINDOW_S:
            chain.recent.popleft()
        if len(chain.recent) >= limits.heartbeat_rps_limit:
            chain.cooldown_until = now + limits.heartbeat_cooldown_ms / 1000
            raise HeartbeatRefused("HEARTBEAT_RATE_LIMITED", f"more than "
                                   f"{limits.heartbeat_rps_limit} heartbeat requests in one "
                                   "second", max(WINDOW_S - (now - chain.recent[0]),
                                                 limits.heartbeat_cooldown_ms / 1000))  # fmt: skip
        if chain.depth >= limits.max_chain_depth:
            message = f"the chain is {chain.depth} deep (limit {limits.max_chain_depth})"
            raise HeartbeatRefused("HEARTBEAT_DEPTH_EXCEEDED", message)
        if (now - chain.started) * 1000 > limits.max_chain_duration_ms:
            message = f"the chain is older than {limits.max_chain_duration_ms} ms"
            raise HeartbeatRefused("HEARTBEAT_DURATION_EXCEEDED", message)
        chain.recent.append(now)
        chain.depth += 1
        return True

    def answered(self, session: str, requested: bool) -> None:
        """A response went out: it continues (or opens) the chain, or ends it."""
        if requested:
            if session not in self.chains and len(self.chains) >= MAX_CHAINS:
                oldest = min(self.chains, key=lambda s: self.chains[s].started)
                del self.chains[oldest]  # abandoned chains do not pile up
            self.chains.setdefault(session, _Chain(started=self.clock()))
        else:
            self.chains.pop(session, None)
