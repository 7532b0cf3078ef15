"""Who may see the dashboard: one-time tokens, the sessions they open, and same-origin checks.

Jupyter's model. `soulstone ui` asks the gateway for a token minted for the
caller's client; the browser brings it once (`/?token=…`), trades it for a
session cookie and never shows it again. Only hashes of tokens and session
ids are kept. Pure: the clock is given, nothing here does I/O.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from soulstone.guard.clients import Client

TOKEN_TTL_S = 600.0  # a token not used within ten minutes is void
SESSION_IDLE_S = 12 * 3600.0  # a session unused for twelve hours ends
MAX_TOKENS = 64
MAX_SESSIONS = 256
CSRF_HEADER = "X-Soulstone-CSRF"


def _digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).digest()


@dataclass
class Session:
    """A browser's session: whose it is, and the value its state-changing calls must echo."""

    client: Client
    csrf: str
    last_used: float


@dataclass
class Access:
    """The tokens not yet used and the sessions they opened, for one dashboard listener."""

    clock: Callable[[], float]
    token_ttl: float = TOKEN_TTL_S
    session_idle: float = SESSION_IDLE_S
    _tokens: OrderedDict[bytes, tuple[Client, float]] = field(default_factory=OrderedDict)
    _sessions: OrderedDict[bytes, Session] = field(default_factory=OrderedDict)

    def mint(self, client: Client) -> str:
        """A new one-time token for this client (only its hash is kept)."""
        token = secrets.token_urlsafe(32)
        self._tokens[_digest(token)] = (client, self.clock() + self.token_ttl)
        while len(self._tokens) > MAX_TOKENS:
            self._tokens.popitem(last=False)
        return token

    def redeem(self, token: str) -> tuple[str, Session] | None:
        """Trade a valid token (then void) for a new session: its id and the session."""
        found = self._tokens.pop(_digest(token), None)
        if found is None or found[1] < self.clock():
            return None
        session_id = secrets.token_urlsafe(32)
        session = Session(found[0], secrets.token_urlsafe(24), self.clock())
        self._sessions[_digest(session_id)] = session
        while len(self._sessions) > MAX_SESSIONS:
            self._sessions.popitem(last=False)
        return session_id, session

    def session(self, session_id: str | None) -> Session | None:
        """The live session of a cookie's value, None when there is none (or it lapsed)."""
        if not session_id:
            return None
        key = _digest(session_id)
        found = self._sessions.get(key)
        if found is None:
            return None
        now = self.clock()
        if now - found.last_used > self.session_idle:
            del self._sessions[key]
            return None
        found.last_used = now
        self._sessions.move_to_end(key)
        return found

    def end_all(self) -> None:
        """Forget every token and session (the listener closes)."""
        self._tokens.clear()
        self._sessions.clear()


def origins(port: int) -> tuple[str, ...]:
    """The dashboard's own origins on this port (it is only ever served on loopback)."""
    return (f"http://127.0.0.1:{port}", f"http://localhost:{port}")


def host_allowed(host: str | None, port: int) -> bool:
    """The Host header names this listener (a DNS-rebinding page sends its own name)."""
    return host is not None and host.lower() in (f"127.0.0.1:{port}", f"localhost:{port}")


def same_origin_refusal(headers: Mapping[str, str], port: int, session: Session) -> str | None:
    """Why a state-changing request may not come from this page; None when it may.

    It must carry the session's CSRF value in `X-Soulstone-CSRF` (a header no
    other site can set without our consent), and its Origin, or failing that
    its Referer, must be the dashboard's own.
    """
    sent = headers.get(CSRF_HEADER, "")
    if not sent or not hmac.compare_digest(sent, session.csrf):
        return f"the request lacks the page's {CSRF_HEADER} header"
    origin = headers.get("Origin")
    if origin is None:
        referer = headers.get("Referer")
        if referer is None:
            return "the request has neither Origin nor Referer"
        parts = urlsplit(referer)
        origin = f"{parts.scheme}://{parts.netloc}"
    if origin not in origins(port):
        return f"the request comes from {origin}, not from this dashboard"
    return None
