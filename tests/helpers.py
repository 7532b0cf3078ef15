"""Shared test helpers: write codex files, load them, find problems."""

from __future__ import annotations

import signal
import socket
import subprocess
from pathlib import Path

import pytest

from soulstone.codex.conflicts import conflict_pairs
from soulstone.codex.facts import HostFacts
from soulstone.codex.load import load_codex
from soulstone.codex.models import Codex, Health, Soulstone
from soulstone.errors import CodexError, Problem

EXAMPLES = Path(__file__).parent / "data" / "examples"
FAKE_ENGINE = Path(__file__).parent / "fakes" / "fake_engine.py"
NO_PODMAN = HostFacts()
PODMAN_HOST = HostFacts(has_podman=True, has_user_systemd=True, gpu_vendor="nvidia")


def write(folder: Path, files: dict[str, str]) -> Path:
    """Write codex files into a folder and return it."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (folder / name).write_text(text, encoding="utf-8")
    return folder


def load(folder: Path, host: HostFacts = NO_PODMAN) -> Codex:
    """Load a codex folder with no model files on disk."""
    return load_codex([folder], host, read_models=lambda _ref: None)


def problems(folder: Path, host: HostFacts = NO_PODMAN) -> tuple[Problem, ...]:
    """Load a codex that must be invalid and return its problems."""
    with pytest.raises(CodexError) as caught:
        load(folder, host)
    return caught.value.problems


def one(found: tuple[Problem, ...], table: str, field: str) -> Problem:
    """The single problem for this table and field; fails with all of them otherwise."""
    matching = [p for p in found if p.table == table and p.field == field]
    assert len(matching) == 1, f"expected one problem at [{table}] {field}, got {found}"
    return matching[0]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nobody listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def stone(soulstone_id: str, *groups: str) -> Soulstone:
    """A generic process soulstone in these groups (none: solitary), serving its id as model."""
    return Soulstone(id=soulstone_id, file="codex.toml", groups=groups, engine="generic",
                     runtime="process", argv=("serve",), models=(soulstone_id,),
                     health=Health(path="/health", start_timeout=10.0, interval=0.5))  # fmt: skip


def codex_of(*soulstones: Soulstone) -> Codex:
    """A codex of these soulstones, sorted by id, with their conflict pairs."""
    ordered = tuple(sorted(soulstones, key=lambda s: s.id))
    return Codex(ordered, conflict_pairs(ordered))


def terminate(process: subprocess.Popen[bytes], timeout: float) -> int:
    """SIGTERM a process, SIGKILL it when it has not exited within `timeout`; its exit code."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode
