"""Remote soulstones (SPEC C12): their key, their health probe, and the `remote` runtime.

The runtime starts and stops nothing: `start` probes the remote (StartError
when it does not answer), `stop` forgets it, `status` is the last probe
(a fresh one where none was made in this process). The key is read from
`key_file` (owned by this user, mode 0600 or narrower, as clients.yaml is
checked) or `key_env`, and goes nowhere but the Authorization header:
never into a message, a log line or a status.
"""

from __future__ import annotations

import asyncio
import os
import ssl
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import aiohttp
import orjson

from soulstone.codex.models import RuntimeName, Soulstone
from soulstone.errors import SoulstoneError
from soulstone.files import looseness
from soulstone.runtimes.base import EngineStatus, StartError

CONNECT_TIMEOUT_S = 1.0  # a remote that does not accept a connection in a second is down
PROBE_TIMEOUT_S = 3.0
MAX_KEY_MODE = 0o600
COUNCIL_PREFIX = "council/"


class RemoteKeyError(SoulstoneError):
    """A remote's key cannot be read, or its file is open to others."""


def read_key(soulstone: Soulstone) -> str | None:
    """The remote's key (None when it declares none); RemoteKeyError when it cannot be read."""
    where = f"[{soulstone.id}] in {soulstone.file}"
    if soulstone.key_env is not None:
        value = os.environ.get(soulstone.key_env, "").strip()
        if not value:
            raise RemoteKeyError(f"{where}: the environment variable {soulstone.key_env} "
                                 "holding its key is not set")  # fmt: skip
        return value
    if soulstone.key_file is None:
        return None
    path = Path(soulstone.key_file).expanduser()
    try:
        loose = looseness(path, MAX_KEY_MODE)
        if loose is not None:
            raise RemoteKeyError(f"{where}: key_file {path} {loose}: others could read or "
                                 f"change the key; refusing it (chmod 600 {path})")  # fmt: skip
        value = path.read_text(encoding="utf-8").strip()
    except OSError as error:
        raise RemoteKeyError(f"{where}: key_file {path} cannot be read "
                             f"({type(error).__name__})") from None  # fmt: skip
    if not value or any(c.isspace() for c in value):
        raise RemoteKeyError(f"{where}: key_file {path} must hold one key on one line")
    return value


def auth_headers(key: str | None) -> dict[str, str]:
    """The Authorization header for a key (none without one)."""
    return {} if key is None else {"Authorization": f"Bearer {key}"}


@dataclass(frozen=True)
class Probe:
    """One health probe of a remote: whether it answered, which path, the models it lists."""

    healthy: bool
    at: float  # wall-clock time
    path: str | None = None  # the path that answered
    reason: str | None = None  # why it is unreachable (never the key)
    models: tuple[str, ...] | None = None  # read from /v1/models (discover, or a 2nd probe)


def remote_session(soulstone: Soulstone, key: str | None) -> aiohttp.ClientSession:
    """A client session to the remote (its socket, or TCP with TLS for https), key attached."""
    address = soulstone.address
    assert address is not None
    connector: aiohttp.BaseConnector = (
        aiohttp.UnixConnector(path=address.socket, limit=0, keepalive_timeout=30)
        if address.socket is not None
        else aiohttp.TCPConnector(
            limit=0,
            keepalive_timeout=30,
            use_dns_cache=False,
            ssl=ssl.create_default_context() if address.tls else False,
        )
    )
    return aiohttp.ClientSession(
        connector=connector, headers=auth_headers(key),
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=CONNECT_TIMEOUT_S),
        skip_auto_headers=("User-Agent",),
    )  # fmt: skip


def _model_ids(document: object) -> tuple[str, ...] | None:
    """The model ids of a `/v1/models` answer (councils left out: they are the remote's)."""
    if not isinstance(document, dict) or not isinstance(document.get("data"), list):
        return None
    ids = [entry.get("id") for entry in document["data"] if isinstance(entry, dict)]
    return tuple(i for i in ids if isinstance(i, str) and not i.startswith(COUNCIL_PREFIX))


async def probe_remote(session: aiohttp.ClientSession, soulstone: Soulstone,
                       timeout: float = PROBE_TIMEOUT_S) -> Probe:  # fmt: skip
    """GET the health path, else `/v1/models`; with `models = "discover"`, read the list too.

    Healthy on a 200 from either. A declared `health.path` is the only one tried
    before `/v1/models`.
    """
    address = soulstone.address
    assert address is not None
    limit = aiohttp.ClientTimeout(total=timeout, sock_connect=CONNECT_TIMEOUT_S)
    models_path = address.path_for("/v1/models")
    answered: str | None = None
    reason = "no answer"
    try:
        async with session.get(address.origin + address.path_for(soulstone.health.path),
                               timeout=limit) as response:  # fmt: skip
            if response.status == 200:
                answered = soulstone.health.path
            else:
                reason = f"{soulstone.health.path} answered {response.status}"
        models: tuple[str, ...] | None = None
        if answered is None or soulstone.discover:
            async with session.get(address.origin + models_path, timeout=limit) as response:
                if response.status == 200:
                    answered = answered or "/v1/models"
                    models = _model_ids(orjson.loads(await response.read()))
                elif answered is None:
                    reason += f"; /v1/models answered {response.status}"
    except (aiohttp.ClientError, OSError, TimeoutError, orjson.JSONDecodeError) as error:
        kind = "timed out" if isinstance(error, TimeoutError) else type(error).__name__
        return Probe(False, time.time(), reason=f"unreachable ({kind})")
    if answered is None:
        return Probe(False, time.time(), reason=reason)
    return Probe(True, time.time(), answered, models=models)


async def probe_once(soulstone: Soulstone) -> Probe:
    """Probe with a session of its own (the CLI's, or a runtime call's)."""
    try:
        key = read_key(soulstone)
    except RemoteKeyError as error:
        return Probe(False, time.time(), reason=str(error))
    async with remote_session(soulstone, key) as session:
        return await probe_remote(session, soulstone)


class RemoteRuntime:
    """Routes to a remote; never starts or stops it (start probes, stop forgets)."""

    name: RuntimeName = "remote"

    def __init__(self) -> None:
        self.probes: dict[str, Probe] = {}  # the last probe of each remote (the gateway's watch)
        self.parked: set[str] = set()  # stopped on purpose: not routed to until started

    def record(self, soulstone: Soulstone, probe: Probe) -> None:
        """Remember a probe made elsewhere (the gateway's watch)."""
        self.probes[soulstone.id] = probe

    def start(self, soulstone: Soulstone) -> None:
        """Probe the remote; StartError when it does not answer."""
        probe = asyncio.run(probe_once(soulstone))
        self.probes[soulstone.id] = probe
        if not probe.healthy:
            raise StartError(f"{soulstone.id}: the remote {soulstone.remote} is {probe.reason}")
        self.parked.discard(soulstone.id)

    def stop(self, soulstone: Soulstone) -> None:
        """Forget the remote (it keeps running where it is)."""
        self.parked.add(soulstone.id)

    def status(self, soulstone: Soulstone) -> EngineStatus:
        """The last probe: running (healthy) or stopped (unreachable, with why)."""
        probe = self.probes.get(soulstone.id)
        if probe is None:
            probe = self.probes[soulstone.id] = asyncio.run(probe_once(soulstone))
        state: Literal["running", "stopped"] = "running"
        reason = None
        if soulstone.id in self.parked:
            state, reason = "stopped", "not routed to (stopped)"
        elif not probe.healthy:
            state, reason = "stopped", probe.reason
        return EngineStatus(soulstone.id, state, since=probe.at,
                            health="healthy" if probe.healthy else "unhealthy",
                            reason=reason)  # fmt: skip

    def mark_healthy(self, soulstone: Soulstone) -> None:
        """Nothing to remember beyond the probe."""

    def details(self, found: EngineStatus) -> EngineStatus:
        """Nothing more to look at."""
        return found

    def log_tail(self, soulstone: Soulstone, lines: int = 20) -> str:
        """A remote's logs are on its own machine."""
        return ""

    def log_command(self, soulstone: Soulstone, follow: bool) -> list[str] | None:
        """None: there is no local log."""
        return None
