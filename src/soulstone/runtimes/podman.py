"""The podman runtime: containers where Podman exists but no user systemd does.

Each engine is the `podman run` command that Podman's quadlet generator
makes from the soulstone's forged unit (see podman_unit), run in the
foreground under soulstone's keeper: the exit code is recorded, the output
kept in the engine's log, a stop is TERM (which `podman run` passes to the
container) then KILL, and the service's `ExecStopPost=` (`podman rm -f`)
removes whatever container is left, whether the engine was stopped or died.
"""

from __future__ import annotations

import subprocess
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

from soulstone.codex.models import RuntimeName, Soulstone
from soulstone.host import find_generator
from soulstone.runtimes.base import EngineStatus, StartError
from soulstone.runtimes.podman_unit import ContainerCommands, container_commands
from soulstone.runtimes.process import DEFAULT_GRACE_S, ProcessRuntime, port_in_use
from soulstone.runtimes.state import StateFolder, read_json
from soulstone.runtimes.systemd_exec import UnitCommand

COMMAND_TIMEOUT_S = 60
INSPECT_TIMEOUT_S = 15


def run_unit_commands(commands: tuple[UnitCommand, ...], env: Mapping[str, str]) -> None:
    """Run a service's commands in order; one that fails (and is not `-`-prefixed) raises."""
    for command in commands:
        try:
            done = subprocess.run(list(command.argv), env=dict(env), capture_output=True,
                                  text=True, timeout=COMMAND_TIMEOUT_S, check=False)  # fmt: skip
        except (OSError, subprocess.TimeoutExpired) as error:
            if command.ignore_failure:
                continue
            raise StartError(f"{' '.join(command.argv)}: {error}") from None
        if done.returncode != 0 and not command.ignore_failure:
            detail = done.stderr.strip() or f"exit {done.returncode}"
            raise StartError(f"{' '.join(command.argv)} failed: {detail}")


def inspect_container(name: str, template: str) -> str | None:
    """One field of `podman container inspect` (a Go template such as `{{.State.Pid}}`).

    None when the container does not exist; "" when podman cannot be run.
    """
    try:
        found = subprocess.run(
            ["podman", "container", "inspect", "--format", template, name],
            capture_output=True, text=True, timeout=INSPECT_TIMEOUT_S, check=False,
        )  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return found.stdout.strip() if found.returncode == 0 else None


def container_state(name: str) -> str:
    """Podman's state of a container (`running`, `exited` …), `absent`, or `unknown`."""
    state = inspect_container(name, "{{.State.Status}}")
    if state is None:
        return "absent"
    return state or "unknown"


class PodmanRuntime(ProcessRuntime):
    """Runs each engine's generated `podman run` under a keeper (no systemd needed)."""

    name: RuntimeName = "podman"

    def __init__(
        self,
        state: StateFolder,
        grace: float = DEFAULT_GRACE_S,
        environ: Mapping[str, str] | None = None,
        strict: bool = False,
    ) -> None:
        super().__init__(state, grace=grace, environ=environ)
        self.strict = strict

    def commands(self, soulstone: Soulstone) -> ContainerCommands:
        """The commands of the soulstone's generated service, for this user."""
        generator = find_generator(self.environ)
        if generator is None:
            raise StartError(
                "the podman runtime needs Podman's quadlet generator (Podman 4.4 or newer, "
                "/usr/libexec/podman/quadlet) or SOULSTONE_QUADLET naming it"
            )
        folder = self.state.root / "units" / soulstone.unit
        return container_commands(soulstone, self.strict, generator, folder, self.environ)

    def start(self, soulstone: Soulstone) -> None:
        """Prepare (the service's ExecStartPre=) and run its `podman run` under a keeper."""
        if self.status(soulstone).active:
            return
        self.state.ensure()
        self._await_last_keeper(soulstone)  # a container that just died: its clean-up first
        if soulstone.port is not None and soulstone.port_expose and port_in_use(soulstone.port):
            raise StartError(f"port {soulstone.port} is already in use by another process")
        commands = self.commands(soulstone)
        env = {**self.environ, **commands.environment}
        run_unit_commands(commands.prepare, env)
        if commands.cidfile is not None:
            cidfile = Path(commands.cidfile)
            cidfile.parent.mkdir(mode=0o700, parents=True, exist_ok=True)  # %t, as systemd's
            if cidfile.exists():
                # A stale container-id file makes `podman run` refuse: remove what it names first.
                run_unit_commands(commands.cleanup, env)
                cidfile.unlink(missing_ok=True)
        self._launch(soulstone, commands.run, env, after=[c.argv for c in commands.cleanup],
                     container=commands.container, cleanup=[list(c.argv) for c in commands.cleanup],
                     generated=list(commands.generated))  # fmt: skip

    def stop(self, soulstone: Soulstone) -> None:
        """TERM then KILL through the keeper, then remove whatever container is left.

        The keeper runs the clean-up itself once the engine ends; it runs here
        only when the keeper could not (it was killed, or gave up waiting).
        """
        super().stop(soulstone)
        kept = read_json(self.state.keeper(soulstone.id)) or {}
        if kept.get("after_done"):
            return
        record = read_json(self.state.record(soulstone.id))
        cleanup = record.get("cleanup") if record else None
        if isinstance(cleanup, list) and cleanup:
            commands = tuple(UnitCommand(tuple(c), ignore_failure=True) for c in cleanup)
            run_unit_commands(commands, self.environ)

    def status(self, soulstone: Soulstone) -> EngineStatus:
        """The keeper's view of `podman run`, with the container's name."""
        return replace(super().status(soulstone), container=soulstone.unit)

    def details(self, found: EngineStatus) -> EngineStatus:
        """The status with Podman's own state of the container."""
        if found.container is None:
            return found
        return replace(found, container_state=container_state(found.container))
