"""Whole-or-nothing file writes (a temporary file, then a rename), and reading a tail."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def replace_file(path: Path, data: bytes, mode: int = 0o600, folder_mode: int = 0o700) -> None:
    """Write `data` to `path` atomically with `mode` (a missing folder is made `folder_mode`)."""
    path.parent.mkdir(mode=folder_mode, parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def tail_lines(path: Path, lines: int, window: int = 64 * 1024) -> str:
    """The last lines of a text file (read from its last `window` bytes); '' if unreadable."""
    try:
        with path.open("rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(0, handle.tell() - window))
            text = handle.read().decode(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])
