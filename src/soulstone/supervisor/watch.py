"""Learn at once that an engine's process ended: a Linux pidfd per engine, read by the event loop.

A pidfd becomes readable when its process ends, whoever its parent is, so the
gateway hears of an engine's death without polling anything. Where pidfds
are missing (an old kernel, no pid known), nothing is watched and deaths are
still found when a request's connection to the engine breaks.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable

from soulstone.runtimes import procfs


class ExitWatch:
    """One pidfd per key (a soulstone id); calls back once when that process ends."""

    def __init__(self) -> None:
        self._fds: dict[str, int] = {}
        self._ended: dict[str, asyncio.Event] = {}

    def add(self, key: str, pid: int, on_exit: Callable[[], None]) -> None:
        """Watch this process under `key`, replacing what was watched there (where pidfds work)."""
        self.remove(key)
        try:
            fd = os.pidfd_open(pid)
        except (OSError, AttributeError):
            return
        loop = asyncio.get_running_loop()
        ended = self._ended[key] = asyncio.Event()
        if not procfs.alive(pid):  # it ended before the pidfd was opened (or it is a zombie)
            os.close(fd)
            ended.set()
            loop.call_soon(on_exit)
            return
        self._fds[key] = fd
        loop.add_reader(fd, self._fire, key, on_exit)

    def watching(self, key: str) -> bool:
        """True while a live process is watched under `key`."""
        return key in self._fds

    def ended(self, key: str) -> asyncio.Event | None:
        """Set once the process watched under `key` ended; None when nothing is watched there."""
        return self._ended.get(key)

    def _fire(self, key: str, on_exit: Callable[[], None]) -> None:
        self._close(key)
        ended = self._ended.get(key)
        if ended is not None:
            ended.set()
        on_exit()

    def _close(self, key: str) -> None:
        fd = self._fds.pop(key, None)
        if fd is not None:
            asyncio.get_running_loop().remove_reader(fd)
            os.close(fd)

    def remove(self, key: str) -> None:
        """Stop watching `key` (an engine stopped on purpose: its end is no death)."""
        self._close(key)
        self._ended.pop(key, None)

    def close(self) -> None:
        """Stop watching everything."""
        for key in list(self._fds):
            self._close(key)
        self._ended.clear()
