"""Warm adapters: materialised from their blobs into `<cache>/adapters/<sha256>/`.

Folders are 0700 and files 0600 (the cache and its parents included, whatever
the umask). Every method blocks (hashing, copying): the gateway calls them off
the event loop. Threads may warm at once; one adapter is built by one at a time.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
from pathlib import Path

from soulstone.lora.adapter import AdapterRefused, sha256_file
from soulstone.lora.folders import PRIVATE_FOLDER, private_folder
from soulstone.lora.registry import AdapterRecord

COMPLETE = ".complete"
PRIVATE_FILE = 0o600


def _copy_private(source: str, target: Path) -> None:
    """Copy a file into a new file of mode 0600 (never through a link at `target`)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(target, flags, PRIVATE_FILE)
    os.fchmod(fd, PRIVATE_FILE)
    with open(source, "rb") as reader, os.fdopen(fd, "wb") as writer:
        shutil.copyfileobj(reader, writer, 1 << 20)


def _plain_name(name: str) -> str:
    if name in {"", ".", ".."} or "/" in name or "\0" in name or name == COMPLETE:
        raise ValueError(f"{name!r} cannot be a file of a warm adapter")
    return name


class AdapterCache:
    """Content-addressed folders of adapter files, written whole or not at all."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._guard = threading.Lock()
        self._building: dict[str, threading.Lock] = {}

    def folder(self, record: AdapterRecord) -> Path:
        """Where this adapter's files live when warm."""
        return self.root / record.digest

    def is_warm(self, record: AdapterRecord) -> bool:
        """True when the folder exists and was completed (hashes are checked on `warm`)."""
        return (self.folder(record) / COMPLETE).is_file()

    def intact(self, record: AdapterRecord) -> bool:
        """True when every file is there with its recorded hash."""
        folder = self.folder(record)
        try:
            return self.is_warm(record) and all(
                sha256_file(folder / name) == sha for name, sha in record.files.items()
            )
        except (OSError, AdapterRefused):  # a file missing, a link, not a regular file
            return False

    def _lock(self, digest: str) -> threading.Lock:
        with self._guard:
            return self._building.setdefault(digest, threading.Lock())

    def warm(self, record: AdapterRecord, blobs: dict[str, str]) -> Path:
        """The adapter's folder, (re)built from its blobs unless it is already intact."""
        with self._lock(record.digest):
            target = self.folder(record)
            if self.intact(record):
                os.chmod(target, PRIVATE_FOLDER)  # a copy from before folders were private
                for name in (*record.files, COMPLETE):
                    os.chmod(target / name, PRIVATE_FILE)
                return target
            private_folder(self.root)
            staging = Path(tempfile.mkdtemp(dir=self.root, prefix=f".{record.digest}.",
                                            suffix=".tmp"))  # fmt: skip
            try:
                os.chmod(staging, PRIVATE_FOLDER)
                for name, blob in blobs.items():
                    _copy_private(blob, staging / _plain_name(name))
                complete = staging / COMPLETE
                complete.write_text(record.digest)
                os.chmod(complete, PRIVATE_FILE)
                shutil.rmtree(target, ignore_errors=True)  # damaged: rebuilt
                os.replace(staging, target)
            except BaseException:
                shutil.rmtree(staging, ignore_errors=True)
                raise
            return target

    def remove(self, record: AdapterRecord) -> None:
        """Forget the warm copy."""
        with self._lock(record.digest):
            shutil.rmtree(self.folder(record), ignore_errors=True)
