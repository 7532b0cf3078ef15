"""The quadlet runtime drives `systemctl --user`: its exact calls, through a stand-in."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers import EXAMPLES, PODMAN_HOST, load
from soulstone.codex.models import Soulstone
from soulstone.runtimes.base import Health
from soulstone.runtimes.quadlet import QuadletRuntime
from soulstone.runtimes.state import StateFolder
from soulstone.supervisor.plan import Target
from soulstone.supervisor.supervisor import Supervisor

STAND_IN = Path(__file__).parents[1] / "fakes" / "systemctl_stand_in.py"


@pytest.fixture
def systemctl(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """An executable stand-in for systemctl; yields its call log."""
    script = tmp_path / "systemctl"
    script.write_text(f"#!{sys.executable}\n" + STAND_IN.read_text())
    script.chmod(0o755)
    monkeypatch.setenv("SYSTEMCTL_STAND_IN_DIR", str(tmp_path))
    yield script


async def healthy(_soulstone: Soulstone) -> Health:
    return "healthy"


async def test_manifest_and_down_issue_exactly_these_systemctl_calls(
    tmp_path: Path, systemctl: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    codex = load(EXAMPLES, PODMAN_HOST)
    assert {s.runtime for s in codex.soulstones} == {"quadlet"}
    conflicts: dict[str, list[str]] = {}
    for a, b in codex.conflicts:
        conflicts.setdefault(f"soulstone-{a.replace('.', '-')}.service", []).append(
            f"soulstone-{b.replace('.', '-')}.service"
        )
        conflicts.setdefault(f"soulstone-{b.replace('.', '-')}.service", []).append(
            f"soulstone-{a.replace('.', '-')}.service"
        )
    monkeypatch.setenv("SYSTEMCTL_CONFLICTS", json.dumps(conflicts))
    state = StateFolder(tmp_path / "state")
    runtime = QuadletRuntime(state, systemctl=str(systemctl))
    supervisor = Supervisor(codex, state, {"quadlet": runtime}, prober=healthy)

    await supervisor.manifest(Target("group", "logic"))
    await supervisor.manifest(Target("soulstone", "flash"))
    flash = codex.get("flash")
    assert flash is not None
    status = await supervisor.status(flash)
    assert (status.state, status.unit, status.pid) == ("running", "soulstone-flash.service", 4242)
    assert await supervisor.down() == ["flash"]

    calls = [line for line in (tmp_path / "calls").read_text().splitlines()
             if not line.startswith("--user show")]  # fmt: skip
    assert calls == [
        "--user start --no-block soulstone-logic-alpha.service",
        "--user start --no-block soulstone-logic-beta.service",
        "--user stop soulstone-logic-alpha.service",
        "--user stop soulstone-logic-beta.service",
        "--user start --no-block soulstone-flash.service",
        "--user stop soulstone-flash.service",
    ]
    shows = [line for line in (tmp_path / "calls").read_text().splitlines()
             if line.startswith("--user show")]  # fmt: skip
    assert shows and all(
        line.endswith("--timestamp=unix "
                      "--property=ActiveState,MainPID,ExecMainStatus,StateChangeTimestamp")
        for line in shows
    )  # fmt: skip


def test_a_failing_start_names_the_forge(tmp_path: Path) -> None:
    script = tmp_path / "systemctl"
    script.write_text("#!/bin/sh\necho 'Unit soulstone-flash.service not found.' >&2\nexit 5\n")
    script.chmod(0o755)
    runtime = QuadletRuntime(StateFolder(tmp_path / "state"), systemctl=str(script))
    flash = load(EXAMPLES, PODMAN_HOST).get("flash")
    assert flash is not None
    with pytest.raises(Exception, match="soulstone forge"):
        runtime.start(flash)
    assert os.path.exists(tmp_path / "state" / "engines" / "flash.json")
