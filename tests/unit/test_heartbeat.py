"""Heartbeat chains: each limit trips exactly at its threshold, per session, and resets."""

from __future__ import annotations

import pytest

from soulstone.tools.heartbeat import HeartbeatRefused, Heartbeats
from soulstone.tools.policy import HeartbeatLimits

LIMITS = HeartbeatLimits(heartbeat_rps_limit=3, heartbeat_cooldown_ms=750, max_chain_depth=8,
                         max_chain_duration_ms=60000)  # fmt: skip


def setup() -> tuple[Heartbeats, list[float]]:
    now = [100.0]
    return Heartbeats(clock=lambda: now[0]), now


def refused(beats: Heartbeats, session: str, limits: HeartbeatLimits = LIMITS) -> HeartbeatRefused:
    with pytest.raises(HeartbeatRefused) as caught:
        beats.admit(session, limits)
    return caught.value


def test_requests_outside_a_chain_are_not_heartbeats() -> None:
    beats, _ = setup()
    assert beats.admit("s", LIMITS) is False
    beats.answered("s", requested=True)
    assert beats.admit("s", LIMITS) is True
    beats.answered("s", requested=False)  # a response without the flag ends the chain
    assert beats.admit("s", LIMITS) is False


def test_rate_limit_then_cooldown_then_reset() -> None:
    beats, now = setup()
    beats.answered("s", requested=True)
    for _ in range(3):  # exactly the limit in one second passes
        assert beats.admit("s", LIMITS)
        now[0] += 0.1
    error = refused(beats, "s")  # the fourth within the second
    assert error.code == "HEARTBEAT_RATE_LIMITED"
    assert error.retry_after is not None and error.retry_after >= 1
    now[0] += 0.5
    assert refused(beats, "s").code == "HEARTBEAT_COOLDOWN"
    beats.answered("other", requested=True)
    assert beats.admit("other", LIMITS)  # per session
    now[0] += 0.3  # 0.8 s after the refusal: the 750 ms cool-down is over, the window too
    assert beats.admit("s", LIMITS)


def test_depth_limit() -> None:
    beats, now = setup()
    beats.answered("s", requested=True)
    for _ in range(8):
        assert beats.admit("s", LIMITS)
        now[0] += 1.0  # slow enough for the rate limit
    error = refused(beats, "s")
    assert error.code == "HEARTBEAT_DEPTH_EXCEEDED" and error.retry_after is None
    beats.answered("s", requested=False)
    beats.answered("s", requested=True)  # a new chain starts at depth 0
    assert beats.admit("s", LIMITS)


def test_duration_limit() -> None:
    beats, now = setup()
    beats.answered("s", requested=True)
    now[0] += 60.0  # exactly the limit still passes
    assert beats.admit("s", LIMITS)
    now[0] += 0.5
    assert refused(beats, "s").code == "HEARTBEAT_DURATION_EXCEEDED"
