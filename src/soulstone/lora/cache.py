"""Warm adapters: materialised from their blobs into `<cache>/adapters/<sha256>/`."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from soulstone.lora.adapter import sha256_file
from soulstone.lora.registry import AdapterRecord

COMPLETE = ".complete"


class AdapterCache:
    """Content-addressed folders of adapter files, written whole or not at all."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def folder(self, record: AdapterRecord) -> Path:
        """Where this adapter's files live when warm."""
        return self.root / record.digest

    def is_warm(self, record: AdapterRecord) -> bool:
        """True when the folder exists and was completed (hashes are checked on `warm`)."""
        return (self.folder(record) / COMPLETE).is_file()

    def intact(self, record: AdapterRecord) -> bool:
        """True when every file is there with its recorded hash."""
        folder = self.folder(record)
        return self.is_warm(record) and all(
            (folder / name).is_file() and sha256_file(folder / name) == sha
            for name, sha in record.files.items()
        )

    def warm(self, record: AdapterRecord, blobs: dict[str, str]) -> Path:
        """The adapter's folder, (re)built from its blobs unless it is already intact."""
        target = self.folder(record)
        if self.intact(record):
            return target
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        staging = self.root / f".{record.digest}.{os.getpid()}.tmp"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(mode=0o700)
        for name, blob in blobs.items():
            shutil.copyfile(blob, staging / name)
        (staging / COMPLETE).write_text(record.digest)
        shutil.rmtree(target, ignore_errors=True)  # damaged: rebuilt
        os.replace(staging, target)
        return target

    def remove(self, record: AdapterRecord) -> None:
        """Forget the warm copy."""
        shutil.rmtree(self.folder(record), ignore_errors=True)
