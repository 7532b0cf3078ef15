"""The process runtime with a fake engine: faults end with nothing left and a clear report."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

import pytest

from conftest import MakeSupervisor
from helpers import FAKE_ENGINE, free_port, load, write
from soulstone.codex.models import Codex
from soulstone.runtimes import procfs
from soulstone.runtimes.process import ProcessRuntime
from soulstone.runtimes.state import StateFolder, read_json
from soulstone.supervisor.plan import Target
from soulstone.supervisor.supervisor import Event, ManifestError, Supervisor


def fake(name: str, *flags: str, port: int | None = None, socket: Path | None = None,
         groups: list[str] | None = None, timeout: float = 15) -> str:  # fmt: skip
    """A codex table running the fake engine with these flags."""
    address = ["--uds", str(socket)] if socket else ["--port", str(port)]
    lines = [
        f"[{name}]",
        f"exec = {json.dumps([sys.executable, str(FAKE_ENGINE), *flags, *address])}",
        f'socket = "{socket}"' if socket else f"port = {port}",
        f'health = {{ path = "/health", start_timeout = {timeout}, interval = 0.1 }}',
    ]
    if groups is not None:
        lines.append(f"groups = {json.dumps(groups)}")
    return "\n".join(lines) + "\n"


def engine_pids(supervisor: Supervisor, soulstone_id: str) -> tuple[int, int]:
    """(engine pid, keeper pid) from the keeper's record."""
    kept = read_json(supervisor.state.keeper(soulstone_id))
    assert kept is not None
    return kept["pid"], kept["keeper_pid"]


async def one_running(
    tmp_path: Path, make_supervisor: MakeSupervisor
) -> tuple[Supervisor, Codex, int, int]:
    """A supervisor with one fake engine `a` running: (supervisor, codex, pid, keeper pid)."""
    codex = load(write(tmp_path / "codex", {"a.toml": fake("a", port=free_port())}))
    supervisor = make_supervisor(codex)
    await supervisor.manifest(Target("soulstone", "a"))
    return supervisor, codex, *engine_pids(supervisor, "a")


def wait_until_gone(pid: int, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while procfs.alive(pid) and time.monotonic() < deadline:
        time.sleep(0.02)


def assert_gone(pgid: int, keeper: int) -> None:
    assert procfs.group_members(pgid) == []
    assert not procfs.alive(keeper)


async def test_up_status_down(tmp_path: Path, make_supervisor: MakeSupervisor) -> None:
    codex = load(write(tmp_path / "codex", {"a.toml": fake("a", port=free_port())}))
    events: list[Event] = []
    supervisor = make_supervisor(codex, events=events)
    [a] = codex.soulstones
    await supervisor.manifest(Target("soulstone", "a"))
    status = await supervisor.status(a)
    assert (status.state, status.health) == ("running", "healthy")
    assert status.pid is not None and status.since is not None
    assert [e.kind for e in events][:1] == ["starting"] and events[-1].kind == "healthy"
    plan = await supervisor.manifest(Target("soulstone", "a"))
    assert plan.noop  # what already runs is a no-op
    pid, keeper = engine_pids(supervisor, "a")
    assert await supervisor.down() == ["a"]
    assert_gone(pid, keeper)
    stopped = await supervisor.status(a)
    assert (stopped.state, stopped.pid) == ("stopped", None)
    log = supervisor.state.log("a").read_text()
    assert "fake engine" in log and "engine ended" in log


async def test_engine_that_forks_children_leaves_none(
    tmp_path: Path, make_supervisor: MakeSupervisor
) -> None:
    table = fake("a", "--fork-child", "--escape-child", port=free_port())
    codex = load(write(tmp_path / "codex", {"a.toml": table}))
    supervisor = make_supervisor(codex)
    await supervisor.manifest(Target("soulstone", "a"))
    pid, keeper = engine_pids(supervisor, "a")
    family = procfs.descendants(keeper)
    assert len(family) >= 2  # the engine and its children (one escaped into its own session)
    await supervisor.down()
    assert_gone(pid, keeper)
    assert not [p for p in family if procfs.alive(p)]


async def test_engine_that_ignores_sigterm_is_killed_after_the_grace(
    tmp_path: Path, make_supervisor: MakeSupervisor
) -> None:
    codex = load(
        write(tmp_path / "codex", {"a.toml": fake("a", "--ignore-term", port=free_port())})
    )
    supervisor = make_supervisor(codex, grace=1.0)
    await supervisor.manifest(Target("soulstone", "a"))
    pid, keeper = engine_pids(supervisor, "a")
    began = time.monotonic()
    await supervisor.down()
    assert time.monotonic() - began >= 1.0
    assert_gone(pid, keeper)
    [a] = codex.soulstones
    status = await supervisor.status(a)
    assert (status.state, status.exit_code) == ("stopped", -9)


async def test_engine_that_exits_at_once(tmp_path: Path, make_supervisor: MakeSupervisor) -> None:
    codex = load(write(tmp_path / "codex", {"a.toml": fake("a", "--exit-at-once", "7", port=1)}))
    supervisor = make_supervisor(codex)
    with pytest.raises(ManifestError) as caught:
        await supervisor.manifest(Target("soulstone", "a"))
    [failure] = caught.value.failures
    assert failure.soulstone == "a"
    assert "exit 7" in failure.reason
    assert "exiting at once" in failure.log_tail
    [a] = codex.soulstones
    status = await supervisor.status(a)
    assert (status.state, status.exit_code) == ("failed", 7)
    pid, keeper = engine_pids(supervisor, "a")
    assert_gone(pid, keeper)


async def test_engine_that_never_becomes_healthy(
    tmp_path: Path, make_supervisor: MakeSupervisor
) -> None:
    table = fake("a", "--never-healthy", port=free_port(), timeout=1.5)
    codex = load(write(tmp_path / "codex", {"a.toml": table}))
    supervisor = make_supervisor(codex)
    with pytest.raises(ManifestError) as caught:
        await supervisor.manifest(Target("soulstone", "a"))
    [failure] = caught.value.failures
    assert "not healthy after 1.5 s" in failure.reason
    assert "fake engine" in failure.log_tail
    pid, keeper = engine_pids(supervisor, "a")
    assert_gone(pid, keeper)


async def test_status_shows_a_crash_nobody_watched(
    tmp_path: Path, make_supervisor: MakeSupervisor
) -> None:
    supervisor, codex, pid, keeper = await one_running(tmp_path, make_supervisor)
    os.kill(pid, signal.SIGKILL)  # a crash: the keeper records it, nobody else is watching
    wait_until_gone(keeper)
    [a] = codex.soulstones
    status = await supervisor.status(a)
    assert (status.state, status.exit_code) == ("failed", -9)


async def test_swap_between_conflicting_groups_and_failed_start_stops_the_new_set(
    tmp_path: Path, make_supervisor: MakeSupervisor
) -> None:
    files = {
        "a.toml": fake("a", port=free_port(), groups=["g1"]),
        "b.toml": fake("b", socket=tmp_path / "run" / "b.sock", groups=["g2"]),
        "c.toml": fake("c", "--exit-at-once", "3", port=free_port(), groups=["g2"]),
    }
    codex = load(write(tmp_path / "codex", files))
    supervisor = make_supervisor(codex)
    await supervisor.manifest(Target("soulstone", "a"))
    a_pid, a_keeper = engine_pids(supervisor, "a")
    with pytest.raises(ManifestError):
        await supervisor.manifest(Target("group", "g2"))  # b starts, c fails: both stopped
    assert_gone(a_pid, a_keeper)  # a was swapped out before the start
    states = {s.id: s.state for s in await supervisor.statuses()}
    assert states == {"a": "stopped", "b": "stopped", "c": "failed"}


async def test_port_in_use_is_refused(tmp_path: Path, make_supervisor: MakeSupervisor) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        codex = load(write(tmp_path / "codex", {"a.toml": fake("a", port=port)}))
        supervisor = make_supervisor(codex)
        with pytest.raises(ManifestError, match=f"port {port} is already in use"):
            await supervisor.manifest(Target("soulstone", "a"))


async def test_stop_works_when_the_keeper_was_killed(
    tmp_path: Path, make_supervisor: MakeSupervisor
) -> None:
    supervisor, codex, pid, keeper = await one_running(tmp_path, make_supervisor)
    os.kill(keeper, signal.SIGKILL)
    wait_until_gone(keeper)
    [a] = codex.soulstones
    assert (await supervisor.status(a)).state == "running"  # the engine outlives its keeper
    assert await supervisor.down(Target("soulstone", "a")) == ["a"]
    assert procfs.group_members(pid) == []
    assert (await supervisor.status(a)).state == "stopped"


async def test_a_spare_keeper_runs_the_next_start_and_another_waits_after(tmp_path: Path) -> None:
    codex = load(write(tmp_path / "codex", {"a.toml": fake("a", port=free_port())}))
    [a] = codex.soulstones
    state = StateFolder(tmp_path / "state")
    runtime = ProcessRuntime(state, grace=2.0, spare_keeper=True)
    supervisor = Supervisor(codex, state, {"process": runtime})
    try:
        spare = runtime.spare_pid
        assert spare is not None
        await supervisor.manifest(Target("soulstone", "a"))
        pid, keeper = engine_pids(supervisor, "a")
        kept = read_json(state.keeper("a"))
        assert kept is not None and kept["spare"] is True  # the waiting keeper took the order
        assert procfs.wait_gone(spare, None, 10)  # and, its report relayed, its launcher ended
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        assert b"HF_HUB_OFFLINE=1" in environ  # the engine's environment, as without a spare
        assert "fake engine" in runtime.log_tail(a)
        assert runtime.spare_pid not in (None, spare)  # a new spare once a was healthy
        assert await supervisor.down() == ["a"]
        assert_gone(pid, keeper)
        assert (await supervisor.status(a)).state == "stopped"
    finally:
        runtime.stop(a)
        waiting = runtime.spare_pid
        runtime.close()
        assert waiting is None or procfs.wait_gone(waiting, None, 10)
