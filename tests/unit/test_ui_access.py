"""Who may see the dashboard: one-time tokens, sessions, the Host and same-origin checks."""

from __future__ import annotations

from soulstone.gateway.ui_access import (
    CSRF_HEADER,
    Access,
    host_allowed,
    same_origin_refusal,
)
from soulstone.guard.clients import Client, LimitsDecl

ANN = Client("ann", None, False, LimitsDecl())


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_token_opens_one_session_once() -> None:
    access = Access(Clock())
    token = access.mint(ANN)
    opened = access.redeem(token)
    assert opened is not None
    session_id, session = opened
    assert session.client == ANN and session_id != token
    assert access.redeem(token) is None  # one time only
    assert access.session(session_id) is session
    assert access.session(token) is None  # the token is not a session id
    assert access.session("") is None and access.session(None) is None


def test_an_unused_token_expires() -> None:
    clock = Clock()
    access = Access(clock, token_ttl=60)
    token = access.mint(ANN)
    clock.now += 61
    assert access.redeem(token) is None


def test_an_idle_session_ends_and_a_used_one_stays() -> None:
    clock = Clock()
    access = Access(clock, session_idle=100)
    opened = access.redeem(access.mint(ANN))
    assert opened is not None
    clock.now += 90
    assert access.session(opened[0]) is not None  # used: its idle time starts again
    clock.now += 90
    assert access.session(opened[0]) is not None
    clock.now += 101
    assert access.session(opened[0]) is None


def test_end_all_forgets_tokens_and_sessions() -> None:
    access = Access(Clock())
    token = access.mint(ANN)
    opened = access.redeem(access.mint(ANN))
    assert opened is not None
    access.end_all()
    assert access.redeem(token) is None and access.session(opened[0]) is None


def test_only_the_listeners_own_host_is_served() -> None:
    assert host_allowed("127.0.0.1:8999", 8999)
    assert host_allowed("LOCALHOST:8999", 8999)
    assert not host_allowed("127.0.0.1:9000", 8999)
    assert not host_allowed("evil.example:8999", 8999)  # DNS rebinding
    assert not host_allowed(None, 8999)


def test_state_changes_need_the_csrf_header_and_the_same_origin() -> None:
    access = Access(Clock())
    opened = access.redeem(access.mint(ANN))
    assert opened is not None
    session = opened[1]
    good = {CSRF_HEADER: session.csrf, "Origin": "http://127.0.0.1:8999"}
    assert same_origin_refusal(good, 8999, session) is None
    assert same_origin_refusal({**good, "Origin": "http://localhost:8999"}, 8999, session) is None
    referer = {CSRF_HEADER: session.csrf, "Referer": "http://127.0.0.1:8999/#engines"}
    assert same_origin_refusal(referer, 8999, session) is None
    assert "lacks" in str(same_origin_refusal({"Origin": "http://127.0.0.1:8999"}, 8999, session))
    assert "lacks" in str(same_origin_refusal({**good, CSRF_HEADER: "guess"}, 8999, session))
    assert "evil" in str(same_origin_refusal({**good, "Origin": "http://evil.example"}, 8999,
                                             session))  # fmt: skip
    assert "neither" in str(same_origin_refusal({CSRF_HEADER: session.csrf}, 8999, session))
    other = {**good, "Origin": "http://127.0.0.1:9000"}  # another local service's page
    assert same_origin_refusal(other, 8999, session) is not None
