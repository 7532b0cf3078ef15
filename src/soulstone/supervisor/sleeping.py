"""Which engines the supervisor has put to sleep (vLLM's sleep mode), across processes.

A mark per engine in the state folder names the very process that sleeps
(its pid and start time as the runtime reports them), so a mark left by an
engine that has since ended or restarted means nothing.
"""

from __future__ import annotations

import time
from dataclasses import replace

from soulstone.runtimes.base import EngineStatus
from soulstone.runtimes.state import StateFolder, read_json, write_json


class SleepMarks:
    """Reads and writes the sleep marks of one state folder."""

    def __init__(self, state: StateFolder) -> None:
        self.state = state

    def put(self, found: EngineStatus) -> None:
        """Mark this running engine as sleeping."""
        self.state.ensure()
        write_json(self.state.sleep(found.id),
                   {"pid": found.pid, "since": found.since, "at": time.time()})  # fmt: skip

    def clear(self, soulstone_id: str) -> None:
        """Forget the mark (the engine woke, or stops)."""
        self.state.sleep(soulstone_id).unlink(missing_ok=True)

    def apply(self, found: EngineStatus) -> EngineStatus:
        """The status as `sleeping` when a mark names this very process, else unchanged."""
        if not found.active:
            return found
        mark = read_json(self.state.sleep(found.id))
        if mark is None or (mark.get("pid"), mark.get("since")) != (found.pid, found.since):
            return found
        return replace(found, state="sleeping", health=None)
