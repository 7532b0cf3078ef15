"""`soulstone clients add` run by two real processes at once: both edits land, comments stay."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from soulstone.guard.keys import key_id, verify_key
from soulstone.guard.store import load_clients, locked

SCRIPT = Path(sys.executable).parent / "soulstone"
SOURCES = Path(__file__).resolve().parents[2] / "src"
COMMENTED = """\
# who may call the gateway
clients:
  alice:   # me
    users: [alice]
"""


def waiting_on(lock: Path) -> set[int]:
    """Pids blocked in flock() on this file, as the kernel lists them in /proc/locks."""
    inode = os.stat(lock).st_ino
    waiting = set()
    for line in Path("/proc/locks").read_text().splitlines():
        fields = line.split()
        blocked = len(fields) > 6 and fields[1] == "->" and fields[2] == "FLOCK"
        if blocked and int(fields[6].rsplit(":", 1)[1]) == inode:
            waiting.add(int(fields[5]))
    return waiting


def wait_until_blocked(lock: Path, processes: list[subprocess.Popen[str]]) -> None:
    """Return once every process waits on the lock; fail if one finishes without waiting."""
    pids = {p.pid for p in processes}
    deadline = time.monotonic() + 60
    while not pids <= waiting_on(lock):
        finished = [p.args for p in processes if p.poll() is not None]
        assert not finished, f"finished without waiting for the lock: {finished}"
        assert time.monotonic() < deadline, "the edits never waited for the lock"
        time.sleep(0.01)  # polls the kernel's lock table: the event itself


def test_two_concurrent_adds_both_land(tmp_path: Path) -> None:
    path = tmp_path / "clients.yaml"
    path.write_text(COMMENTED)
    path.chmod(0o600)
    env = {**os.environ, "PYTHONPATH": str(SOURCES), "HOME": str(tmp_path)}
    command = [str(SCRIPT), "clients", "add", "--key", "--clients", str(path)]
    processes: list[subprocess.Popen[str]] = []
    try:
        with locked(path):  # both start, both queue on the lock, then race for it
            for name in ("one", "two"):
                processes.append(subprocess.Popen(
                    [*command, name], env=env, text=True,
                    stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                ))  # fmt: skip
            wait_until_blocked(path.with_name("clients.yaml.lock"), processes)
        outputs = [p.communicate(timeout=60) for p in processes]
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
    assert [p.returncode for p in processes] == [0, 0], outputs
    loaded = load_clients(path)
    assert loaded is not None and next(iter(loaded.clients)) == "alice"
    assert set(loaded.clients) == {"alice", "one", "two"}  # in either order
    for name, (stdout, _) in zip(("one", "two"), outputs, strict=True):
        key = stdout.strip()
        stored = loaded.clients[name].keys[0]
        assert key_id(key) == stored.id and verify_key(key, stored.hash)
    edited = path.read_text()
    assert edited.startswith("# who may call the gateway\n") and "alice:   # me" in edited
