"""Linux process facts from /proc: liveness that survives pid reuse, groups, children."""

from __future__ import annotations

import os
import select
import time
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")


@dataclass(frozen=True)
class ProcStat:
    """The fields of /proc/PID/stat that soulstone uses."""

    pid: int
    state: str
    ppid: int
    pgid: int
    start_ticks: int


def stat(pid: int) -> ProcStat | None:
    """Read /proc/PID/stat, or None when there is no such process."""
    try:
        raw = (PROC / str(pid) / "stat").read_text()
    except (OSError, ValueError):
        return None
    # The command name (field 2) may hold spaces and parentheses: split after the last ')'.
    fields = raw[raw.rfind(")") + 2 :].split()
    return ProcStat(pid, fields[0], int(fields[1]), int(fields[2]), int(fields[19]))


def start_ticks(pid: int) -> int | None:
    """When the process started (clock ticks since boot), or None if it is gone."""
    found = stat(pid)
    return None if found is None else found.start_ticks


def alive(pid: int | None, ticks: int | None = None) -> bool:
    """True while the process runs (not a zombie) and, if given, started at `ticks`."""
    if pid is None or pid <= 0:
        return False
    found = stat(pid)
    if found is None or found.state in ("Z", "X"):
        return False
    return ticks is None or found.start_ticks == ticks


def wait_gone(pid: int | None, ticks: int | None, timeout: float) -> bool:
    """Block until the process ended (True) or `timeout` seconds passed (False).

    Waits on a pidfd where the kernel has them; else looks every 20 ms.
    """
    if not alive(pid, ticks):
        return True
    assert pid is not None
    deadline = time.monotonic() + timeout
    try:
        fd = os.pidfd_open(pid)
    except (OSError, AttributeError):
        while alive(pid, ticks) and time.monotonic() < deadline:
            time.sleep(0.02)
        return not alive(pid, ticks)
    try:
        if alive(pid, ticks):  # the pid was not taken by another process meanwhile
            select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
    finally:
        os.close(fd)
    return not alive(pid, ticks)


def _all() -> list[ProcStat]:
    found = []
    for entry in PROC.iterdir():
        if entry.name.isdigit() and (info := stat(int(entry.name))) is not None:
            found.append(info)
    return found


def _group_exists(pgid: int) -> bool:
    """Whether any process is in this group (one signal 0, no /proc scan)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's group: it exists, /proc says who is in it
    return True


def group_members(pgid: int) -> list[int]:
    """Pids of the live (non-zombie) processes in a process group.

    A group that no process is in any more (the usual case after a stop)
    is known from one `killpg(pgid, 0)`, without reading all of /proc.
    """
    if not _group_exists(pgid):
        return []
    return sorted(p.pid for p in _all() if p.pgid == pgid and p.state not in ("Z", "X"))


def children(pid: int) -> list[int]:
    """Pids of the direct children of a process, zombies included."""
    return sorted(p.pid for p in _all() if p.ppid == pid)


def descendants(pid: int) -> list[int]:
    """Pids of every live process below this one."""
    table = _all()
    found: list[int] = []
    frontier = [pid]
    while frontier:
        parent = frontier.pop()
        for proc in table:
            if proc.ppid == parent and proc.state not in ("Z", "X"):
                found.append(proc.pid)
                frontier.append(proc.pid)
    return sorted(found)


def signal_group(pgid: int, signum: int) -> None:
    """Send a signal to a process group, ignoring a group that is already gone."""
    try:
        os.killpg(pgid, signum)
    except (ProcessLookupError, PermissionError):
        return
