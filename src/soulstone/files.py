"""Whole-or-nothing file writes (a temporary file, then a rename), log files: tails, rotation."""

from __future__ import annotations

import contextlib
import itertools
import os
import stat
import threading
from pathlib import Path

_NUMBERS = itertools.count()


def _temporary(path: Path) -> tuple[int, Path]:
    """A new file (0600) beside `path`, for a rename over it: `.NAME.PID.N.tmp`.

    Not `tempfile.mkstemp`: importing tempfile costs the keeper, which writes
    its record before each engine start is reported, several milliseconds.
    """
    while True:
        temporary = path.parent / f".{path.name}.{os.getpid()}.{next(_NUMBERS)}.tmp"
        try:
            return os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), temporary
        except FileExistsError:
            continue


def replace_file(
    path: Path, data: bytes, mode: int = 0o600, folder_mode: int = 0o700, durable: bool = True
) -> None:
    """Write `data` to `path` atomically with `mode` (a missing folder is made `folder_mode`).

    Readers see the old file or the new one, never a mix. `durable`: the
    data reaches the disk (fsync) before the rename, so that a power cut
    cannot leave an empty file; leave it out for files that only describe
    processes running now (a power cut ends them too).
    """
    path.parent.mkdir(mode=folder_mode, parents=True, exist_ok=True)
    fd, temporary = _temporary(path)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            if durable:
                handle.flush()
                os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def _last_lines(path: Path, lines: int, window: int) -> list[str]:
    try:
        with path.open("rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(0, handle.tell() - window))
            text = handle.read().decode(errors="replace")
    except OSError:
        return []
    return text.splitlines()[-lines:] if lines > 0 else []


def tail_lines(path: Path, lines: int, window: int = 64 * 1024) -> str:
    """The last lines of a log file (read from its last `window` bytes); '' if unreadable.

    When the file holds fewer lines (it was just rotated), the rest come from
    the end of its newest old file, `NAME.1`.
    """
    found = _last_lines(path, lines, window)
    if len(found) < lines:
        found = _last_lines(rotated_name(path, 1), lines - len(found), window) + found
    return "\n".join(found)


def rotated_name(path: Path, number: int) -> Path:
    """The name of a rotated log: `NAME.1` is the newest old file, `NAME.N` the oldest."""
    return path.with_name(f"{path.name}.{number}")


class RotatingLog:
    """Bytes appended to a log file that is rotated past a size: `NAME.1` … `NAME.keep`.

    Each file stays within `limit` bytes. A rotation falls between two lines
    when the bytes written end a line; only a single line longer than the
    limit is cut in two. Rotation renames (`NAME` becomes `NAME.1`, the
    oldest is dropped) and opens a new `NAME`, so a reader that follows the
    path (`soulstone logs -f`, the dashboard) reads the old file to its end,
    then the new one. Writes are unbuffered and serialised by a lock (a
    reader thread and the main thread may both write). The file is 0600.
    """

    def __init__(self, path: Path, limit: int, keep: int) -> None:
        if limit < 1 or keep < 1:
            raise ValueError("a rotating log needs a limit and a count of old files of 1 or more")
        self.path, self.limit, self.keep = path, limit, keep
        self._lock = threading.Lock()
        self._fd = -1
        self.size = 0
        self._open()

    def _open(self) -> None:
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self.size = os.fstat(self._fd).st_size

    def _rotate(self) -> None:
        os.close(self._fd)
        for number in range(self.keep - 1, 0, -1):
            with contextlib.suppress(FileNotFoundError):
                os.replace(rotated_name(self.path, number), rotated_name(self.path, number + 1))
        os.replace(self.path, rotated_name(self.path, 1))
        self._open()

    def _write_all(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            written = os.write(self._fd, view)
            view = view[written:]
        self.size += len(data)

    def write(self, data: bytes) -> None:
        """Append bytes, rotating first wherever they would pass the limit."""
        with self._lock:
            while data:
                room = self.limit - self.size
                if len(data) <= room:
                    self._write_all(data)
                    return
                cut = data.rfind(b"\n", 0, max(room, 0)) + 1  # the whole lines that fit
                if not cut and not self.size:
                    cut = room  # one line longer than the limit: cut it
                if cut:
                    self._write_all(data[:cut])
                    data = data[cut:]
                self._rotate()

    def close(self) -> None:
        """Close the file (later writes fail)."""
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1


def looseness(path: Path, max_mode: int) -> str | None:
    """Why a private file may not be trusted (another owner, a mode wider than `max_mode`),
    or None when it is the caller's and narrow enough; OSError when it cannot be looked at."""
    info = path.stat()
    if info.st_uid != os.getuid():
        return f"is owned by uid {info.st_uid}, not by this user ({os.getuid()})"
    mode = stat.S_IMODE(info.st_mode)
    if mode & ~max_mode:
        return f"has mode {mode:04o}, wider than {max_mode:04o}"
    return None
