"""Shared fixtures: the test-session process check, supervisors that clean up after themselves."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from soulstone.codex.models import Codex
from soulstone.lora.owner import RegistryOwner
from soulstone.runtimes import procfs
from soulstone.runtimes.state import StateFolder, read_json
from soulstone.runtimes.table import make_runtimes
from soulstone.supervisor.supervisor import Event, Prepare, Supervisor

pytest_plugins = ["gateway_harness", "prometheus_harness", "otlp_receiver", "container_images",
                  "hub_server"]  # fmt: skip

SESSION_MARKER = "SOULSTONE_TEST_SESSION"
ID_LABEL = "soulstone.id"  # on the containers soulstone starts
TEST_LABEL = "soulstone.test"  # on the containers tests start; its value: the session marker


def _marked_processes(marker: str) -> list[int]:
    """Pids of live processes whose environment carries this test session's marker."""
    needle = f"{SESSION_MARKER}={marker}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if needle in environ.split(b"\0") and procfs.alive(int(entry.name)):
            found.append(int(entry.name))
    return found


@pytest.fixture(scope="session", autouse=True)
def nothing_left_running() -> Iterator[None]:
    """Fail the run if any process started by the tests outlives the test session."""
    marker = uuid.uuid4().hex
    os.environ[SESSION_MARKER] = marker
    yield
    left = _marked_processes(marker)
    for pid in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            continue
    assert not left, f"processes started by the tests are still running: {left}"


def _carries_marker(pid: int, marker: str) -> bool:
    """True when the process or one of its three nearest ancestors has this session's marker.

    (A container's process is conmon's child; conmon, whose environment podman cleans,
    is adopted by the soulstone keeper that ran `podman run`.)
    """
    needle = f"{SESSION_MARKER}={marker}".encode()
    for _ in range(4):
        try:
            if needle in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
                return True
        except OSError:
            pass
        found = procfs.stat(pid)
        if found is None or found.ppid <= 1:
            return False
        pid = found.ppid
    return False


def _podman_containers() -> dict[str, dict[str, Any]] | None:
    """Id -> `podman ps` record of every container, running or not; None without podman."""
    if shutil.which("podman") is None:
        return None
    try:
        done = subprocess.run(
            ["podman", "ps", "-a", "--format", "json"], capture_output=True, timeout=60, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return {entry["Id"]: entry for entry in json.loads(done.stdout or b"[]")}


def _ours(entry: dict[str, Any], marker: str) -> bool:
    """A container this session started: its test label, or soulstone's label and either our
    marker in its conmon's environment (running) or no process at all (a leftover)."""
    labels = entry.get("Labels") or {}
    if labels.get(TEST_LABEL) == marker:
        return True
    if ID_LABEL not in labels:
        return False
    pid = int(entry.get("Pid") or 0)
    # Another test session on the same machine may run soulstone containers too.
    return pid <= 0 or _carries_marker(pid, marker)


@pytest.fixture(scope="session", autouse=True)
def no_container_left(nothing_left_running: None) -> Iterator[None]:
    """Fail the run if a container soulstone or this session's tests started outlives the session.

    Counted: new containers labelled soulstone.id (started under this session's marker),
    and those whose soulstone.test label is this session's marker; they are removed
    first. Nothing is checked where podman is missing.
    """
    before = _podman_containers()
    yield
    if before is None or (after := _podman_containers()) is None:
        return
    marker = os.environ[SESSION_MARKER]
    left = [cid[:12] for cid, entry in after.items() if cid not in before and _ours(entry, marker)]
    if left:
        subprocess.run(["podman", "rm", "-f", "-t", "0", *left], capture_output=True, timeout=120,
                       check=False)  # fmt: skip
    assert not left, f"containers started by the tests were left behind (now removed): {left}"


def kill_recorded(state: StateFolder) -> None:
    """Kill, by pid, every keeper and engine group a state folder knows about.

    Then run each container engine's recorded clean-up (`podman rm -f`).
    """
    folder = state.root / "engines"
    if not folder.is_dir():
        return
    for record in folder.glob("*.keeper.json"):
        kept = read_json(record) or {}
        pgid, keeper = kept.get("pgid"), kept.get("keeper_pid")
        if isinstance(pgid, int):
            procfs.signal_group(pgid, signal.SIGKILL)
        if procfs.alive(keeper, kept.get("keeper_ticks")):
            assert isinstance(keeper, int)
            os.kill(keeper, signal.SIGKILL)
    for record in folder.glob("*.json"):
        started = read_json(record) or {}
        for command in started.get("cleanup") or []:
            subprocess.run(command, capture_output=True, timeout=120, check=False)


MakeSupervisor = Callable[..., Supervisor]


@pytest.fixture
def make_supervisor(tmp_path: Path) -> Iterator[MakeSupervisor]:
    """Build supervisors on a private state folder; stop and kill what they ran afterwards."""
    made: list[Supervisor] = []
    state = StateFolder(tmp_path / "state")

    def build(codex: Codex, grace: float = 2.0, events: list[Event] | None = None,
              preflight: Prepare | None = None) -> Supervisor:  # fmt: skip
        on_event = events.append if events is not None else None
        supervisor = Supervisor(codex, state, make_runtimes(state, grace=grace), on_event=on_event,
                                preflight=preflight)  # fmt: skip
        made.append(supervisor)
        return supervisor

    yield build
    for supervisor in made:
        for soulstone in supervisor.codex.soulstones:
            if soulstone.runtime in ("process", "podman"):
                supervisor.runtime(soulstone).stop(soulstone)
    kill_recorded(state)


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A scratch folder with a short path (vLLM puts IPC sockets in its TMPDIR: 107 bytes max)."""
    import shutil
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix="ss-", dir="/tmp"))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
async def owner(tmp_path: Path) -> AsyncIterator[RegistryOwner]:
    """A ZODB adapter registry in the test's folder (through its owner thread), closed after."""
    registry = await RegistryOwner.open(tmp_path / "data")
    try:
        yield registry
    finally:
        await registry.close()
