"""Pooled keep-alive HTTP clients to engines, over TCP or Unix sockets.

Two kinds: the request path's own small client (`runtimes/http1.py`, one pool
per engine address, the hot path) and an aiohttp session per address for
everything else (adapter loads, tokenizing), where aiohttp's cost does not
matter. A remote soulstone (SPEC C12) is addressed at its own host and base
path, with its key in an Authorization header built once into the request
head (and into its session's default headers), never logged.
"""

from __future__ import annotations

import ssl

import aiohttp
from yarl import URL

from soulstone.codex.models import Soulstone
from soulstone.runtimes.http1 import EnginePool, RemoteTarget
from soulstone.runtimes.remote import CONNECT_TIMEOUT_S as REMOTE_CONNECT_TIMEOUT_S
from soulstone.runtimes.remote import read_key, remote_session

CONNECT_TIMEOUT_S = 10.0


def base_url(soulstone: Soulstone) -> str:
    """The engine's origin as the client addresses it (a placeholder host on a socket)."""
    if soulstone.address is not None:
        return soulstone.address.origin
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
        self._keys: dict[str, str | None] = {}
        self._tls: ssl.SSLContext | None = None

    def key(self, soulstone: Soulstone) -> str | None:
        """A remote's key, read once (RemoteKeyError when it cannot be); None for none."""
        if soulstone.id not in self._keys:
            self._keys[soulstone.id] = read_key(soulstone)
        return self._keys[soulstone.id]

    def _remote_pool(self, soulstone: Soulstone) -> EnginePool:
        address = soulstone.address
        assert address is not None
        key: tuple[str, str | int] = ("remote", soulstone.remote or "")
        found = self._pools.get(key)  # the key is in each request's head, not the pool's
        if found is None:
            tls = None
            if address.tls:
                tls = self._tls = self._tls or ssl.create_default_context()
            where: tuple[str, str | int] = (
                ("unix", address.socket) if address.socket is not None else ("tcp", address.port)
            )
            target = RemoteTarget(address.host, tls, REMOTE_CONNECT_TIMEOUT_S)
            found = self._pools[key] = EnginePool(where, target)
        return found

    def url(self, soulstone: Soulstone, path: str) -> URL:
        """The parsed upstream URL for a path (parsed once, then reused)."""
        key = (soulstone.id, path)
        found = self._urls.get(key)
        if found is None:
            address = soulstone.address
            mapped = path if address is None else address.path_for(path)
            found = self._urls[key] = URL(base_url(soulstone) + mapped)
        return found

    def pool(self, soulstone: Soulstone) -> EnginePool:
        """The request path's connection pool for this soulstone's address."""
        if soulstone.remote is not None:
            return self._remote_pool(soulstone)
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
            address = soulstone.address
            if address is not None:  # a remote: its path and Host, and its key
                secret = self.key(soulstone)
                auth = "" if secret is None else f"Authorization: Bearer {secret}\r\n"
                found = self._heads[key] = (
                    f"POST {address.path_for(path)} HTTP/1.1\r\nHost: {address.host_header}"
                    f"\r\n{auth}Content-Type: application/json\r\n".encode()
                )
                return found
            host = "localhost" if soulstone.socket is not None else f"127.0.0.1:{soulstone.port}"
            found = self._heads[key] = (
                f"POST {path} HTTP/1.1\r\nHost: {host}\r\n"
                "Content-Type: application/json\r\n".encode()
            )
        return found

    def session(self, soulstone: Soulstone) -> aiohttp.ClientSession:
        """The pooled session for this soulstone's address (a remote's carries its key)."""
        if soulstone.remote is not None:
            secret = self.key(soulstone)  # a new key (after a reload): a new session
            remote_key: tuple[str, object] = ("remote", (soulstone.remote, secret))
            session = self._sessions.get(remote_key)
            if session is None or session.closed:
                session = self._sessions[remote_key] = remote_session(soulstone, secret)
            return session
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
        """Drop the cached URLs, heads and keys (after a reload, they may have changed)."""
        self._urls.clear()
        self._heads.clear()
        self._keys.clear()

    async def close(self) -> None:
        """Close every pool."""
        for pool in self._pools.values():
            pool.close()
        self._pools.clear()
        for session in self._sessions.values():
            await session.close()
        self._sessions.clear()
