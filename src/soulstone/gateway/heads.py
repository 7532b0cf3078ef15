"""HTTP/1.1 heads for the hot routes (pure): a strict request-head check, response heads as bytes.

The check accepts only the plain shape every OpenAI client sends to a
generation endpoint: `POST` of a known path over HTTP/1.1, one
`Content-Length`, no transfer or content coding, no `Expect`, no upgrade,
printable ASCII only, every header once. Anything else is not refused here:
it is handed to aiohttp's full HTTP server, which answers it as before.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from email.utils import formatdate
from http import HTTPStatus
from typing import Any, NamedTuple, TypeVar, overload

from soulstone.dispatch.call import REQUEST_ID, SERVED_BY_HEADER, SESSION_ID

# Bytes no hot head may hold, but for the CR and LF of its CRLFs: controls other than HTAB,
# and anything not ASCII.
_UNSAFE = bytes([*range(0x09), *range(0x0A, 0x20), *range(0x7F, 0x100)])
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# Headers that make a request something other than the plain shape: aiohttp serves those.
_NOT_HOT = frozenset({"transfer-encoding", "content-encoding", "expect", "upgrade", "connection"})
_T = TypeVar("_T")
HEAD_LIMIT = 16 * 1024  # a hot head is far smaller; a larger one goes to aiohttp


class Headers(dict[str, str]):
    """Request headers by lower-case name; `get` and `[]` take any case."""

    __slots__ = ()

    @overload
    def get(self, key: str, default: None = None, /) -> str | None: ...
    @overload
    def get(self, key: str, default: str, /) -> str: ...
    @overload
    def get(self, key: str, default: _T, /) -> str | _T: ...
    def get(self, key: str, default: Any = None, /) -> Any:
        """The header's value, whatever the case of its name; `default` when absent."""
        return dict.get(self, key.lower(), default)

    def __getitem__(self, key: str) -> str:
        return dict.__getitem__(self, key.lower())

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and dict.__contains__(self, key.lower())


class HotHead(NamedTuple):
    """A request head the hot path serves: its path, headers and body length."""

    path: str
    headers: Headers
    length: int


def parse_head(head: bytes, paths: Mapping[str, Any], max_body: int) -> HotHead | None:
    """The head (without its blank line) when the hot path may serve it; None: aiohttp's.

    `paths`: the hot request paths; `max_body`: larger bodies are aiohttp's (its 413).
    """
    if len(head.translate(None, _UNSAFE)) != len(head) - 2 * head.count(b"\r\n"):
        return None  # a control byte, a CR or LF on its own, or a byte that is not ASCII
    lines = head.decode("ascii").split("\r\n")
    method, _, rest = lines[0].partition(" ")
    path, _, version = rest.partition(" ")
    if method != "POST" or version != "HTTP/1.1" or path not in paths:
        return None
    found: dict[str, str] = {}
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        if not colon or _TOKEN.fullmatch(name) is None:
            return None  # a folded line, a space before the colon, a bad name
        key = name.lower()
        value = value.strip(" \t")
        if key in found or (key in _NOT_HOT and not _keeps_alive(key, value)):
            return None
        found[key] = value
    length = found.get("content-length")
    if length is None or not length.isdigit() or int(length) > max_body:
        return None
    return HotHead(path, Headers(found), int(length))


def _keeps_alive(key: str, value: str) -> bool:
    """`Connection: keep-alive`, what HTTP/1.1 means anyway (httpx sends it)."""
    return key == "connection" and value.lower() == "keep-alive"


_REASONS = {status.value: status.phrase for status in HTTPStatus}


class Dates:
    """The `Date` header line, formatted once a second."""

    __slots__ = ("line", "second")

    def __init__(self) -> None:
        self.second = -1
        self.line = b""

    def now(self) -> bytes:
        """`Date: ...` with its CRLF, for this second."""
        second = int(time.time())
        if second != self.second:
            self.second = second
            self.line = b"Date: %s\r\n" % formatdate(second, usegmt=True).encode()
        return self.line


def _field(value: str) -> bytes:
    """A header value as bytes, never a header of its own."""
    if "\r" in value or "\n" in value:
        value = value.replace("\r", " ").replace("\n", " ")
    return value.encode("utf-8", "surrogateescape")


def correlation_lines(request_id: str, session_id: str | None) -> bytes:
    """The correlation header lines of a response (CRLF after each)."""
    lines = b"%s: %s\r\n" % (REQUEST_ID.encode(), _field(request_id))
    if session_id:
        lines += b"%s: %s\r\n" % (SESSION_ID.encode(), _field(session_id))
    return lines


def header_lines(headers: Mapping[str, str]) -> bytes:
    """More header lines (a refusal's Retry-After, WWW-Authenticate)."""
    return b"".join(b"%s: %s\r\n" % (_field(name), _field(value))
                    for name, value in headers.items())  # fmt: skip


def whole_head(status: int, content_type: str, length: int, lines: bytes, date: bytes,
               served_by: str | None = None) -> bytes:  # fmt: skip
    """The head of a whole answer of `length` bytes (ends with the blank line)."""
    if served_by is not None:
        lines += b"%s: %s\r\n" % (SERVED_BY_HEADER.encode(), _field(served_by))
    reason = _REASONS.get(status, "").encode()
    return b"HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %d\r\n%s%s\r\n" % (
        status, reason, _field(content_type), length, lines, date)  # fmt: skip


def stream_head(content_type: str, lines: bytes, date: bytes, served_by: str | None) -> bytes:
    """The head of a streamed (chunked) answer, status 200."""
    if served_by is not None:
        lines += b"%s: %s\r\n" % (SERVED_BY_HEADER.encode(), _field(served_by))
    return (b"HTTP/1.1 200 OK\r\nContent-Type: %s\r\nCache-Control: no-cache\r\n"
            b"Transfer-Encoding: chunked\r\n%s%s\r\n") % (
        _field(content_type), lines, date)  # fmt: skip
