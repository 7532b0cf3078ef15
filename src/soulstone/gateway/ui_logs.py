"""One engine's log as lines: its last lines, then what it adds, for the dashboard's log view.

The process runtime's log is a file (followed across a rotation, and waited
for when the engine has not written one yet); the quadlet runtime's is the
journal, read by following `journalctl` (the runtime's own log command).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncGenerator
from pathlib import Path
from typing import BinaryIO

from soulstone.files import tail_lines

POLL_S = 0.25  # how often a quiet log file is looked at again
MAX_LINE = 4000  # characters of one line shown (the rest is cut)


def _clip(line: str) -> str:
    return line if len(line) <= MAX_LINE else line[:MAX_LINE] + " …"


class _FileFollower:
    """Reads what a file gains, reopening it when it was replaced (rotated)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.handle: BinaryIO | None = None
        self.partial = ""

    def open_at_end(self) -> None:
        try:
            handle = self.path.open("rb")
        except OSError:
            return
        handle.seek(0, os.SEEK_END)
        self.handle = handle

    def read(self) -> list[str]:
        """Complete new lines since the last read ([] when nothing came)."""
        handle = self.handle
        if handle is None:
            if not self.path.exists():
                return []
            handle = self.handle = self.path.open("rb")  # it appeared: read it from the start
        chunk = handle.read()
        if not chunk:
            try:
                rotated = os.stat(self.path).st_ino != os.fstat(handle.fileno()).st_ino
            except FileNotFoundError:
                rotated = False
            if rotated:
                self.close()
                self.handle = self.path.open("rb")
            return []
        text = self.partial + chunk.decode(errors="replace")
        *lines, self.partial = text.split("\n")
        return lines

    def close(self) -> None:
        handle, self.handle = self.handle, None
        if handle is not None:
            handle.close()


async def follow_file(path: Path, lines: int) -> AsyncGenerator[str, None]:
    """The file's last `lines` lines, then each line it gains, until the caller stops."""
    for line in (await asyncio.to_thread(tail_lines, path, lines)).splitlines():
        yield _clip(line)
    follower = _FileFollower(path)
    await asyncio.to_thread(follower.open_at_end)
    try:
        while True:
            new = await asyncio.to_thread(follower.read)
            for line in new:
                yield _clip(line)
            if not new:
                await asyncio.sleep(POLL_S)
    finally:
        follower.close()


async def follow_command(command: list[str], lines: int) -> AsyncGenerator[str, None]:
    """The lines a following log command prints (`journalctl -f -n N`); it is stopped after."""
    process = await asyncio.create_subprocess_exec(
        *command, "-n", str(lines), stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT, stdin=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    assert process.stdout is not None
    try:
        while True:
            raw = await process.stdout.readline()
            if not raw:
                return
            yield _clip(raw.decode(errors="replace").rstrip("\n"))
    finally:
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
        await process.wait()
