"""Write forged units: only changed files, atomically; remove our stale ones only."""

from __future__ import annotations

import subprocess
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from soulstone.errors import SoulstoneError
from soulstone.files import replace_file
from soulstone.forge.units import MARKER

OWNED_SUFFIXES = (".container", ".service", ".socket")
KUBE_SUFFIXES = (".yaml",)


@dataclass
class ForgeReport:
    """What a forge run did (or, for a dry run, would do) to each file."""

    written: list[Path] = field(default_factory=list)
    unchanged: list[Path] = field(default_factory=list)
    removed: list[Path] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        """True when any file was written or removed."""
        return bool(self.written or self.removed)


def written_by_forge(path: Path) -> bool:
    """True for a file this forge wrote: its first line is the forge's marker."""
    try:
        with path.open(encoding="utf-8", errors="replace") as handle:
            return handle.readline().rstrip("\n") == MARKER
    except OSError:
        return False


def _ours(folder: Path, suffixes: tuple[str, ...]) -> Iterable[Path]:
    if not folder.is_dir():
        return []
    return sorted(
        p
        for p in folder.iterdir()
        if p.name.startswith("soulstone-") and p.suffix in suffixes and written_by_forge(p)
    )


def _replace(path: Path, text: str) -> None:
    replace_file(path, text.encode("utf-8"), mode=0o644, folder_mode=0o755)


def plan(
    files: Mapping[Path, str], folders: Iterable[Path], suffixes: tuple[str, ...] = OWNED_SUFFIXES
) -> ForgeReport:
    """Decide what to write and remove; raise if a file we need is someone else's.

    Removed: files in `folders` that this forge wrote (`soulstone-*` with one of
    `suffixes`, the marker first) and that `files` no longer holds.
    """
    report = ForgeReport()
    foreign = []
    for path, text in sorted(files.items()):
        if not path.exists():
            report.written.append(path)
        elif not written_by_forge(path):
            foreign.append(path)
        elif path.read_text(encoding="utf-8") == text:
            report.unchanged.append(path)
        else:
            report.written.append(path)
    if foreign:
        names = ", ".join(str(p) for p in foreign)
        raise SoulstoneError(
            f"not overwriting files that soulstone forge did not write: {names} "
            "(move them away, or forge into another folder with --output)"
        )
    for folder in sorted(set(folders)):
        report.removed += [p for p in _ours(folder, suffixes) if p not in files]
    return report


def apply(files: Mapping[Path, str], report: ForgeReport) -> None:
    """Carry out a plan: write its changed files, remove its stale ones."""
    for path in report.written:
        _replace(path, files[path])
    for path in report.removed:
        path.unlink(missing_ok=True)


def reload_user_systemd() -> None:
    """Run `systemctl --user daemon-reload`; raise with its message if it fails."""
    try:
        result = subprocess.run(
            ["systemctl", "--user", "daemon-reload"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        raise SoulstoneError(f"systemctl --user daemon-reload failed: {error}") from None
    if result.returncode != 0:
        detail = result.stderr.strip() or f"exit {result.returncode}"
        raise SoulstoneError(f"systemctl --user daemon-reload failed: {detail}")
