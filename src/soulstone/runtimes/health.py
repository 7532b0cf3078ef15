"""Readiness probes: one HTTP GET of the engine's health path over TCP or a Unix socket."""

from __future__ import annotations

import aiohttp

from soulstone.codex.models import Soulstone
from soulstone.runtimes.base import Health
from soulstone.runtimes.remote import probe_once


def health_url(soulstone: Soulstone) -> str:
    """The URL probed (the host is a placeholder on a Unix socket)."""
    host = "localhost" if soulstone.socket is not None else f"127.0.0.1:{soulstone.port}"
    return f"http://{host}{soulstone.health.path}"


async def probe(soulstone: Soulstone, timeout: float = 2.0) -> Health:
    """GET the health path once: healthy on HTTP 200, unhealthy on anything else.

    A remote soulstone is probed as `probe_remote` does (its key, TLS, `/v1/models`).
    """
    if soulstone.remote is not None:
        return "healthy" if (await probe_once(soulstone)).healthy else "unhealthy"
    connector: aiohttp.BaseConnector = (
        aiohttp.UnixConnector(path=soulstone.socket)
        if soulstone.socket is not None
        else aiohttp.TCPConnector()
    )
    try:
        async with (
            aiohttp.ClientSession(
                connector=connector, timeout=aiohttp.ClientTimeout(total=timeout)
            ) as session,
            session.get(health_url(soulstone)) as response,
        ):
            return "healthy" if response.status == 200 else "unhealthy"
    except (TimeoutError, aiohttp.ClientError, OSError):
        return "unhealthy"
