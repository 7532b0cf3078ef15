"""Pooled keep-alive HTTP clients to engines, over TCP or Unix sockets."""

from __future__ import annotations

import aiohttp
from yarl import URL

from soulstone.codex.models import Soulstone

CONNECT_TIMEOUT_S = 10.0


def base_url(soulstone: Soulstone) -> str:
    """The engine's origin as the client addresses it (a placeholder host on a socket)."""
    if soulstone.socket is not None:
        return "http://localhost"
    return f"http://127.0.0.1:{soulstone.port}"


class Upstreams:
    """One client session (a keep-alive pool) per engine address."""

    def __init__(self) -> None:
        self._sessions: dict[tuple[str, object], aiohttp.ClientSession] = {}
        self._urls: dict[tuple[str, str], URL] = {}

    def url(self, soulstone: Soulstone, path: str) -> URL:
        """The parsed upstream URL for a path (parsed once, then reused)."""
        key = (soulstone.id, path)
        found = self._urls.get(key)
        if found is None:
            found = self._urls[key] = URL(base_url(soulstone) + path)
        return found

    def session(self, soulstone: Soulstone) -> aiohttp.ClientSession:
        """The pooled session for this soulstone's address."""
        key: tuple[str, object] = (
            ("unix", soulstone.socket) if soulstone.socket is not None else ("tcp", soulstone.port)
        )
        found = self._sessions.get(key)
        if found is None or found.closed:
            connector: aiohttp.BaseConnector = (
                aiohttp.UnixConnector(path=soulstone.socket, limit=0, keepalive_timeout=60)
                if soulstone.socket is not None
                else aiohttp.TCPConnector(limit=0, keepalive_timeout=60, use_dns_cache=False)
            )
            found = aiohttp.ClientSession(
                connector=connector,
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=CONNECT_TIMEOUT_S),
                auto_decompress=False,
                skip_auto_headers=("User-Agent", "Accept-Encoding"),
            )
            self._sessions[key] = found
        return found

    def forget(self) -> None:
        """Drop the cached URLs (after a reload, addresses may have changed)."""
        self._urls.clear()

    async def close(self) -> None:
        """Close every pool."""
        for session in self._sessions.values():
            await session.close()
        self._sessions.clear()
