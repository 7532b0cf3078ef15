"""The quadlet runtime: engines as the systemd user services that `soulstone forge` wrote."""

from __future__ import annotations

import subprocess
import time
from dataclasses import replace

from soulstone.codex.models import RuntimeName, Soulstone
from soulstone.runtimes.base import EngineState, EngineStatus, StartError
from soulstone.runtimes.podman import container_state
from soulstone.runtimes.state import StateFolder, read_json, write_json

SYSTEMCTL_TIMEOUT_S = 120
_STATES: dict[str, EngineState] = {
    "active": "running",
    "reloading": "running",
    "activating": "starting",
    "deactivating": "running",
    "failed": "failed",
    "inactive": "stopped",
}


def service(soulstone: Soulstone) -> str:
    """The systemd service Quadlet generates for a soulstone."""
    return f"{soulstone.unit}.service"


class QuadletRuntime:
    """Drives `systemctl --user`; systemd itself enforces the units' Conflicts=."""

    name: RuntimeName = "quadlet"

    def __init__(
        self, state: StateFolder, systemctl: str = "systemctl", journalctl: str = "journalctl"
    ) -> None:
        self.state = state
        self.systemctl = systemctl
        self.journalctl = journalctl

    def _run(self, *args: str) -> subprocess.CompletedProcess[str]:
        try:
            return subprocess.run(
                [self.systemctl, "--user", *args], capture_output=True, text=True,
                timeout=SYSTEMCTL_TIMEOUT_S, check=False,
            )  # fmt: skip
        except (OSError, subprocess.TimeoutExpired) as error:
            raise StartError(f"systemctl --user {' '.join(args)}: {error}") from None

    def start(self, soulstone: Soulstone) -> None:
        """`systemctl --user start --no-block` the soulstone's service."""
        self.state.ensure()
        write_json(self.state.record(soulstone.id), {
            "id": soulstone.id, "runtime": self.name, "unit": service(soulstone),
            "started_at": time.time(), "healthy_at": None,
        })  # fmt: skip
        result = self._run("start", "--no-block", service(soulstone))
        if result.returncode != 0:
            detail = result.stderr.strip() or f"exit {result.returncode}"
            raise StartError(
                f"systemctl --user start {service(soulstone)} failed: {detail} "
                "(has `soulstone forge` written its unit?)"
            )

    def stop(self, soulstone: Soulstone) -> None:
        """`systemctl --user stop` the service (systemd stops the container)."""
        result = self._run("stop", service(soulstone))
        if result.returncode != 0 and "not loaded" not in result.stderr:
            raise StartError(f"systemctl --user stop {service(soulstone)} failed: "
                             f"{result.stderr.strip() or result.returncode}")  # fmt: skip

    def status(self, soulstone: Soulstone) -> EngineStatus:
        """State from `systemctl --user show` ("stopped" where systemctl cannot run)."""
        try:
            result = self._run(
                "show", service(soulstone), "--timestamp=unix",
                "--property=ActiveState,MainPID,ExecMainStatus,StateChangeTimestamp",
            )  # fmt: skip
        except StartError:
            return EngineStatus(soulstone.id, "stopped", unit=service(soulstone),
                                port=soulstone.port, socket=soulstone.socket,
                                container=soulstone.unit)  # fmt: skip
        fields = dict(line.split("=", 1) for line in result.stdout.splitlines() if "=" in line)
        state = _STATES.get(fields.get("ActiveState", "inactive"), "stopped")
        record = read_json(self.state.record(soulstone.id)) or {}
        if state == "running" and not record.get("healthy_at"):
            state = "starting"
        pid = int(fields.get("MainPID", "0") or 0) or None
        stamp = fields.get("StateChangeTimestamp", "").lstrip("@")
        since = float(stamp) if stamp.replace(".", "", 1).isdigit() else None
        exit_code = int(fields["ExecMainStatus"]) if state == "failed" and fields.get(
            "ExecMainStatus", "").isdigit() else None  # fmt: skip
        return EngineStatus(
            soulstone.id, state, pid=pid, unit=service(soulstone), since=since,
            port=soulstone.port, socket=soulstone.socket, exit_code=exit_code,
            container=soulstone.unit,
        )  # fmt: skip

    def details(self, found: EngineStatus) -> EngineStatus:
        """The status with Podman's own state of the unit's container."""
        if found.container is None:
            return found
        return replace(found, container_state=container_state(found.container))

    def mark_healthy(self, soulstone: Soulstone) -> None:
        """Record the moment the service first passed soulstone's health check."""
        path = self.state.record(soulstone.id)
        record = read_json(path) or {"id": soulstone.id, "runtime": self.name}
        if not record.get("healthy_at"):
            write_json(path, record | {"healthy_at": time.time()})

    def log_tail(self, soulstone: Soulstone, lines: int = 20) -> str:
        """The service's last journal lines."""
        try:
            result = subprocess.run(
                [self.journalctl, "--user", "-u", service(soulstone), "-n", str(lines),
                 "--no-pager", "-o", "cat"],
                capture_output=True, text=True, timeout=30, check=False,
            )  # fmt: skip
        except (OSError, subprocess.TimeoutExpired):
            return ""
        return result.stdout.strip()

    def log_command(self, soulstone: Soulstone, follow: bool) -> list[str] | None:
        """`journalctl --user -u UNIT` (with `-f` to follow)."""
        return [self.journalctl, "--user", "-u", service(soulstone), "--no-pager",
                *(["-f"] if follow else [])]  # fmt: skip
