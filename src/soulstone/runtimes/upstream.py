"""Pooled keep-alive HTTP clients to engines, over TCP or Unix sockets.

Two kinds: the request path's own small client (`runtimes/http1.py`, one pool
per engine address, the hot path) and an aiohttp session per address for
everything else (adapter loads, tokenizing), where aiohttp's cost does not
matter.
"""

from __future__ import annotations

import aiohttp
from yarl import URL

from soulstone.codex.models import Soulstone
from soulstone.runtimes.http1 import EnginePool

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
        self._pools: dict[tuple[str, str | int], EnginePool] = {}
        self._heads: dict[tuple[str, str], bytes] = {}

    def url(self, soulstone: Soulstone, path: str) -> URL:
        """The parsed upstream URL for a path (parsed once, then reused)."""
        key = (soulstone.id, path)
        found = self._urls.get(key)
        if found is None:
            found = self._urls[key] = URL(base_url(soulstone) + path)
        return found

    def pool(self, soulstone: Soulstone) -> EnginePool:
        """The request path's connection pool for this soulstone's address."""
        key: tuple[str, str | int] = (
            ("unix", soulstone.socket)
            if soulstone.socket is not None
            else ("tcp", soulstone.port or 0)
        )
        found = self._pools.get(key)
        if found is None:
            found = self._pools[key] = EnginePool(key)
        return found

    def request_head(self, soulstone: Soulstone, path: str) -> bytes:
        """`POST path`, Host and Content-Type as bytes, built once per soulstone and path."""
        key = (soulstone.id, path)
        found = self._heads.get(key)
        if found is None:
            host = "localhost" if soulstone.socket is not None else f"127.0.0.1:{soulstone.port}"
            found = self._heads[key] = (
                f"POST {path} HTTP/1.1\r\nHost: {host}\r\n"
                "Content-Type: application/json\r\n".encode()
            )
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
        """Drop the cached URLs and heads (after a reload, addresses may have changed)."""
        self._urls.clear()
        self._heads.clear()

    async def close(self) -> None:
        """Close every pool."""
        for pool in self._pools.values():
            pool.close()
        self._pools.clear()
        for session in self._sessions.values():
            await session.close()
        self._sessions.clear()
