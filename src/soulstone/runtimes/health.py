"""Readiness probes: one HTTP GET of the engine's health path over TCP or a Unix socket,
and how often a starting engine is probed."""

from __future__ import annotations

import asyncio

from soulstone.codex.models import Soulstone
from soulstone.runtimes.base import Health
from soulstone.runtimes.remote import probe_once

FIRST_POLL_S = 0.005  # the first probes of a starting engine follow each other this closely
POLL_RATIO = 0.02  # then a probe waits at most this share of the time waited so far


def poll_gap(elapsed: float, interval: float) -> float:
    """Seconds until the next readiness probe of an engine starting for `elapsed` seconds.

    Starts at FIRST_POLL_S and grows with the time already waited (POLL_RATIO
    of it), never beyond the soulstone's `health.interval`: an engine is seen
    healthy at most 2 % (or 5 ms) after it is, and a slow start (vLLM's
    minutes) is probed every `interval` seconds once it has waited long.
    """
    return min(interval, max(FIRST_POLL_S, elapsed * POLL_RATIO))


async def probe(soulstone: Soulstone, timeout: float = 2.0) -> Health:
    """GET the health path once: healthy on HTTP 200, unhealthy on anything else.

    A remote soulstone is probed as `probe_remote` does (its key, TLS, `/v1/models`).
    A local engine is asked over a plain connection (`Connection: close`, the
    status line read, nothing else): a readiness poll probes every few
    milliseconds, and an HTTP client session per probe would cost the
    gateway more than the probe itself.
    """
    if soulstone.remote is not None:
        return "healthy" if (await probe_once(soulstone)).healthy else "unhealthy"
    host = "localhost" if soulstone.socket is not None else f"127.0.0.1:{soulstone.port}"
    request = (f"GET {soulstone.health.path} HTTP/1.1\r\nHost: {host}\r\n"
               "Connection: close\r\n\r\n").encode()  # fmt: skip
    try:
        async with asyncio.timeout(timeout):
            if soulstone.socket is not None:
                reader, writer = await asyncio.open_unix_connection(soulstone.socket)
            elif soulstone.port is not None:
                reader, writer = await asyncio.open_connection("127.0.0.1", soulstone.port)
            else:
                return "unhealthy"
            try:
                writer.write(request)
                status_line = await reader.readline()
            finally:
                writer.close()
    except (TimeoutError, OSError):
        return "unhealthy"
    version, _, rest = status_line.partition(b" ")
    healthy = version.startswith(b"HTTP/1.") and rest[:4] in (b"200 ", b"200\r")
    return "healthy" if healthy else "unhealthy"
