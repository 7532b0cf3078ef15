"""Readiness probes: one HTTP GET of the engine's health path over TCP or a Unix socket,
and how often a starting engine is probed."""

from __future__ import annotations

import aiohttp

from soulstone.codex.models import Soulstone
from soulstone.runtimes.base import Health
from soulstone.runtimes.remote import probe_once

FIRST_POLL_S = 0.01  # the first probes of a starting engine follow each other this closely
POLL_RATIO = 0.02  # then a probe waits at most this share of the time waited so far


def poll_gap(elapsed: float, interval: float) -> float:
    """Seconds until the next readiness probe of an engine starting for `elapsed` seconds.

    Starts at FIRST_POLL_S and grows with the time already waited (POLL_RATIO
    of it), never beyond the soulstone's `health.interval`: an engine is seen
    healthy at most 2 % (or 10 ms) after it is, and a slow start (vLLM's
    minutes) is probed every `interval` seconds once it has waited long.
    """
    return min(interval, max(FIRST_POLL_S, elapsed * POLL_RATIO))


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
