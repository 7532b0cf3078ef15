"""Watch a folder a trainer writes adapters into: ingest each once it is whole and still."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from soulstone.lora.adapter import CONFIG, WEIGHTS

Snapshot = tuple[tuple[str, int, int], ...]  # (file, size, mtime_ns) for each file


def snapshot(folder: Path) -> Snapshot:
    """What a folder holds right now: its files with their sizes and times."""
    try:
        return tuple(sorted(
            (p.name, (st := p.stat()).st_size, st.st_mtime_ns)
            for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")
        ))  # fmt: skip
    except OSError:
        return ()


@dataclass
class Watcher:
    """Decides which adapter folders are ready: both files present, unchanged since last look.

    A folder is handed out once per content; one that changes again (a
    trainer writing a new version) is handed out again when it settles.
    """

    root: Path
    seen: dict[str, Snapshot] = field(default_factory=dict)
    done: dict[str, Snapshot] = field(default_factory=dict)

    def ready(self) -> list[Path]:
        """Folders whose files stood still since the previous call (call it every interval)."""
        found = []
        folders = sorted(
            p for p in self.root.iterdir() if p.is_dir() and not p.name.startswith(".")
        )
        for folder in folders:
            now = snapshot(folder)
            names = {name for name, _, _ in now}
            complete = CONFIG in names and WEIGHTS in names
            if complete and self.seen.get(folder.name) == now and self.done.get(folder.name) != now:
                self.done[folder.name] = now
                found.append(folder)
            self.seen[folder.name] = now
        return found
