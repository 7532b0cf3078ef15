"""The Runtime protocol, engine status values, and the table of runtimes by name."""

from __future__ import annotations

import datetime
from dataclasses import dataclass, replace
from typing import Literal, Protocol

from soulstone.codex.models import RuntimeName, Soulstone
from soulstone.errors import SoulstoneError

EngineState = Literal["running", "starting", "sleeping", "stopped", "failed"]
Health = Literal["healthy", "unhealthy"]


class StartError(SoulstoneError):
    """An engine could not be started (before any health check)."""


@dataclass(frozen=True)
class EngineStatus:
    """What one soulstone is doing now, as `soulstone status --json` reports it."""

    id: str
    state: EngineState
    pid: int | None = None
    unit: str | None = None
    since: float | None = None
    port: int | None = None
    socket: str | None = None
    health: Health | None = None
    exit_code: int | None = None
    gpu_memory_bytes: int | None = None
    container: str | None = None
    container_state: str | None = None
    reason: str | None = None  # why it is failed, or awaits a restart (the gateway's word)

    @property
    def active(self) -> bool:
        """True while the engine runs or starts (a sleeping engine holds no GPU: not active)."""
        return self.state in ("running", "starting")

    @property
    def alive(self) -> bool:
        """True while the engine's process runs: active, or sleeping (vLLM's sleep mode)."""
        return self.active or self.state == "sleeping"

    def with_health(self, health: Health | None) -> EngineStatus:
        """This status with a fresh health result (a healthy starting engine runs)."""
        state: EngineState = self.state
        if state == "starting" and health == "healthy":
            state = "running"
        return replace(self, health=health, state=state)

    def summary(self) -> dict[str, object]:
        """The `status --json` record (since as an ISO 8601 UTC time).

        An engine in a container adds `container` (its name) and
        `container_state` (Podman's state: running, exited … or absent); one
        the gateway marked failed, or is restarting, adds `reason`.
        """
        since = None
        if self.since is not None:
            moment = datetime.datetime.fromtimestamp(self.since, tz=datetime.UTC)
            since = moment.isoformat(timespec="seconds")
        record: dict[str, object] = {
            "id": self.id,
            "state": self.state,
            "pid": self.pid,
            "unit": self.unit,
            "since": since,
            "port": self.port,
            "socket": self.socket,
            "health": self.health,
            "exit_code": self.exit_code,
        }
        if self.container is not None:
            record |= {"container": self.container, "container_state": self.container_state}
        if self.reason is not None:
            record["reason"] = self.reason
        return record


class Runtime(Protocol):
    """Starts, stops and inspects engines; each call is blocking and bounded in time."""

    name: RuntimeName

    def start(self, soulstone: Soulstone) -> None:
        """Launch the engine and return at once (health is checked by the caller).

        Raises StartError when it cannot even be launched.
        """
        ...

    def stop(self, soulstone: Soulstone) -> None:
        """Stop the engine and everything it started; a no-op when it is not running."""
        ...

    def status(self, soulstone: Soulstone) -> EngineStatus:
        """The engine's state without a health check ("starting" until marked healthy)."""
        ...

    def mark_healthy(self, soulstone: Soulstone) -> None:
        """Remember that the engine passed its health check."""
        ...

    def details(self, found: EngineStatus) -> EngineStatus:
        """The status with what costs a look outside soulstone's records (container state)."""
        ...

    def log_tail(self, soulstone: Soulstone, lines: int = 20) -> str:
        """The last lines the engine printed."""
        ...

    def log_command(self, soulstone: Soulstone, follow: bool) -> list[str] | None:
        """A command that prints (or follows) the logs, or None to read `log_path`."""
        ...
