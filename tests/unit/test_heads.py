"""The hot path's request-head check (pure): the plain shape passes, anything else is aiohttp's."""

from __future__ import annotations

import pytest

from soulstone.dispatch.call import ENDPOINTS
from soulstone.gateway.heads import Headers, correlation_lines, parse_head, whole_head

PLAIN = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\n"
         b"Content-Type: application/json\r\nAuthorization: Bearer sk-x\r\n"
         b"X-Request-ID: abc\r\nContent-Length: 12")  # fmt: skip


def test_the_plain_shape_is_hot_and_its_headers_take_any_case() -> None:
    hot = parse_head(PLAIN, ENDPOINTS, 100)
    assert hot is not None
    assert (hot.path, hot.length) == ("/v1/chat/completions", 12)
    assert hot.headers.get("authorization") == "Bearer sk-x"
    assert hot.headers.get("AUTHORIZATION") == "Bearer sk-x"
    assert hot.headers["x-request-id"] == "abc"
    assert "Content-Type" in hot.headers
    assert hot.headers.get("X-Missing", "none") == "none"


@pytest.mark.parametrize(
    "head",
    [
        PLAIN.replace(b"POST", b"GET"),
        PLAIN.replace(b"HTTP/1.1", b"HTTP/1.0"),
        PLAIN.replace(b"/v1/chat/completions", b"/v1/models"),
        PLAIN.replace(b"/v1/chat/completions", b"/v1/chat/completions?x=1"),
        PLAIN.replace(b"Content-Length: 12", b"Transfer-Encoding: chunked"),
        PLAIN.replace(b"Content-Length: 12", b"Content-Length: +12"),
        PLAIN + b"\r\nContent-Length: 12",  # twice
        PLAIN + b"\r\nX-Request-ID: other",  # any header twice
        PLAIN + b"\r\nContent-Encoding: gzip",
        PLAIN + b"\r\nExpect: 100-continue",
        PLAIN + b"\r\nConnection: close",
        PLAIN + b"\r\nUpgrade: websocket",
        PLAIN + b"\r\n folded continuation",
        PLAIN + b"\r\nBad Name: x",
        PLAIN + b"\r\nNo-Colon",
        PLAIN + b"\r\nX-Split: a\nInjected: b",  # a bare LF
        PLAIN + b"\r\nX-Split: a\rInjected: b",  # a bare CR
        PLAIN + b"\r\nX-Nul: a\x00b",
        PLAIN + "\r\nX-Text: caf\u00e9".encode(),  # not ASCII
        PLAIN.replace(b"Content-Length: 12", b"Content-Length: 101"),  # over the limit: 413
        PLAIN.replace(b"\r\nContent-Length: 12", b""),  # no length
        b"\r\n" + PLAIN,
    ],
)
def test_every_other_shape_goes_to_aiohttp(head: bytes) -> None:
    assert parse_head(head, ENDPOINTS, 100) is None


def test_response_heads_never_carry_a_header_of_the_caller_s_making() -> None:
    lines = correlation_lines("id\r\nSet-Cookie: x", "s")
    head = whole_head(200, "application/json", 2, lines, b"Date: d\r\n", served_by="b")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert head.endswith(b"\r\n\r\n")
    assert b"\r\nSet-Cookie" not in head
    assert b"X-Request-ID: id  Set-Cookie: x\r\n" in head
    assert b"X-Conveyance-Session-ID: s\r\n" in head
    assert b"X-Soulstone-Served-By: b\r\n" in head
    assert b"Content-Length: 2\r\n" in head


def test_connection_keep_alive_is_the_plain_shape_too() -> None:
    assert parse_head(PLAIN + b"\r\nConnection: Keep-Alive", ENDPOINTS, 100) is not None


def test_headers_is_a_plain_mapping() -> None:
    headers = Headers({"a": "1"})
    assert dict(headers) == {"a": "1"}
    assert headers.get("A") == "1"
