"""Per-soulstone state files under $XDG_STATE_HOME/soulstone, written atomically.

They describe processes that run now (pids, start times, health), so they
are replaced atomically but not fsync'd: a reader never sees half a file,
and what a power cut might lose (the file reads as missing) names
processes that the power cut ended anyway. An fsync costs milliseconds on
a busy disk, several times in each engine start and stop.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson

from soulstone.files import replace_file


def write_json(path: Path, document: dict[str, Any]) -> None:
    """Replace a JSON file atomically (temporary file in the same folder, then rename; no fsync)."""
    replace_file(path, orjson.dumps(document, option=orjson.OPT_INDENT_2), mode=0o644,
                 durable=False)  # fmt: skip


def read_json(path: Path) -> dict[str, Any] | None:
    """Read a JSON object, or None when the file is missing or unreadable."""
    try:
        document = orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return None
    return document if isinstance(document, dict) else None


class StateFolder:
    """Where one soulstone installation keeps engine records, logs and its lock.

    Per soulstone: `engines/<id>.json` (what was started, written by the
    supervisor), `engines/<id>.keeper.json` (pids and exit code, written by
    the keeper process), `engines/<id>.sleep.json` (while the supervisor has
    put it to sleep) and `logs/<id>.log` (the engine's output).
    """

    def __init__(self, root: Path) -> None:
        self.root = root

    @property
    def lock(self) -> Path:
        """The lock file that serialises manifestations across processes."""
        return self.root / "supervisor.lock"

    def record(self, soulstone_id: str) -> Path:
        """The supervisor's record of the last start."""
        return self.root / "engines" / f"{soulstone_id}.json"

    def keeper(self, soulstone_id: str) -> Path:
        """The keeper's record: pids, start, exit code."""
        return self.root / "engines" / f"{soulstone_id}.keeper.json"

    def sleep(self, soulstone_id: str) -> Path:
        """The supervisor's mark that the engine was put to sleep (vLLM's sleep mode)."""
        return self.root / "engines" / f"{soulstone_id}.sleep.json"

    def log(self, soulstone_id: str) -> Path:
        """The engine's log file."""
        return self.root / "logs" / f"{soulstone_id}.log"

    @property
    def gateway_log(self) -> Path:
        """The gateway's own JSON log (also written to its stderr)."""
        return self.root / "logs" / "gateway.log"

    def ensure(self) -> None:
        """Create the folders (0700: logs may hold what engines print)."""
        for folder in (self.root, self.root / "engines", self.root / "logs"):
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)
