"""The adapter registry (cold): a ZODB database with each adapter's files as blobs.

`$XDG_DATA_HOME/soulstone/adapters.fs` and its blob folder. One process owns
it at a time (FileStorage locks it): the gateway while it runs, else the CLI.
An add is one transaction: interrupted, it leaves nothing behind. A Registry
is not thread-safe and blocks: the gateway uses it through `RegistryOwner`.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import transaction
import ZODB
import ZODB.FileStorage
from BTrees.OOBTree import OOBTree
from persistent import Persistent
from ZODB.blob import Blob

from soulstone.errors import SoulstoneError
from soulstone.lora.adapter import AdapterInfo, open_regular
from soulstone.lora.folders import private_folder


class RegistryError(SoulstoneError):
    """The registry refused (a name taken, an adapter missing, a database locked)."""


class StoredAdapter(Persistent):  # type: ignore[misc]
    """One adapter in the database: its metadata and one blob per file."""

    def __init__(self, info: AdapterInfo, blobs: dict[str, Blob], created: float) -> None:
        self.name = info.name
        self.base = info.base
        self.rank = info.rank
        self.alpha = info.alpha
        self.target_modules = list(info.target_modules)
        self.base_model = info.base_model
        self.files = dict(info.files)
        self.size = info.size
        self.blobs = blobs
        self.created = created


@dataclass(frozen=True)
class AdapterRecord(AdapterInfo):
    """A stored adapter's metadata, detached from the database."""

    created: float = field(kw_only=True)

    def summary(self, state: str) -> dict[str, Any]:
        """The `lora list --json` record."""
        return {
            "name": self.name, "base": self.base, "rank": self.rank, "alpha": self.alpha,
            "target_modules": list(self.target_modules), "sha256": self.digest,
            "size": self.size,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.created)),
            "state": state,
        }  # fmt: skip


def _record(stored: StoredAdapter) -> AdapterRecord:
    return AdapterRecord(stored.name, stored.base, stored.rank, stored.alpha,
                         tuple(stored.target_modules), stored.base_model, dict(stored.files),
                         stored.size, created=stored.created)  # fmt: skip


class Registry:
    """The adapter database, opened by one process."""

    def __init__(self, folder: Path) -> None:
        try:
            private_folder(folder)
        except OSError as error:
            raise RegistryError(f"cannot make the adapter database's folder {folder}: "
                                f"{error.strerror or error}") from None  # fmt: skip
        try:
            storage = ZODB.FileStorage.FileStorage(
                str(folder / "adapters.fs"), blob_dir=str(folder / "adapters.blobs")
            )
        except Exception as error:  # zc.lockfile.LockError and storage errors
            raise RegistryError(
                f"cannot open the adapter database in {folder}: {error} "
                "(is a gateway running? lora commands then go through it)"
            ) from None
        self.db = ZODB.DB(storage)
        self.manager = transaction.TransactionManager()
        self.connection = self.db.open(self.manager)
        root = self.connection.root()
        if "adapters" not in root:
            root["adapters"] = OOBTree()
            self.manager.commit()

    @property
    def _adapters(self) -> Any:
        return self.connection.root()["adapters"]

    def add(self, info: AdapterInfo, folder: Path) -> AdapterRecord:
        """Store the adapter's files and metadata in one transaction.

        Each file is stored only as it was inspected (its sha256 in `info`):
        one changed since, or turned into a symbolic link, refuses the add.
        """
        self.manager.begin()
        if info.name in self._adapters:
            self.manager.abort()
            raise RegistryError(f"an adapter named {info.name!r} exists: remove it first")
        try:
            blobs = {}
            for name, sha in info.files.items():
                blob, digest = Blob(), hashlib.sha256()
                with blob.open("w") as sink, open_regular(folder / name) as source:
                    while block := source.read(1 << 20):
                        digest.update(block)
                        sink.write(block)
                if digest.hexdigest() != sha:
                    raise RegistryError(f"{folder / name}: changed while it was being added")
                blobs[name] = blob
            stored = StoredAdapter(info, blobs, time.time())
            self._adapters[info.name] = stored
            self.manager.commit()
        except BaseException:
            self.manager.abort()
            raise
        return _record(stored)

    def get(self, name: str) -> AdapterRecord | None:
        """An adapter's record, or None."""
        self.connection.sync()
        stored = self._adapters.get(name)
        return None if stored is None else _record(stored)

    def records(self) -> list[AdapterRecord]:
        """Every adapter, by name."""
        self.connection.sync()
        return [_record(s) for _, s in self._adapters.items()]

    def blob_paths(self, name: str) -> dict[str, str]:
        """The committed blob file of each of an adapter's files (read-only)."""
        stored = self._adapters.get(name)
        if stored is None:
            raise RegistryError(f"no adapter named {name!r}")
        return {file: blob.committed() for file, blob in stored.blobs.items()}

    def remove(self, name: str) -> AdapterRecord:
        """Delete an adapter (its blobs go at the next pack)."""
        self.manager.begin()
        stored = self._adapters.get(name)
        if stored is None:
            self.manager.abort()
            raise RegistryError(f"no adapter named {name!r}")
        record = _record(stored)
        del self._adapters[name]
        self.manager.commit()
        self.db.pack()
        return record

    def close(self) -> None:
        """Close the database (and release its lock)."""
        self.connection.close()
        self.db.close()


@contextmanager
def opened(folder: Path) -> Iterator[Registry]:
    """The registry, closed afterwards."""
    registry = Registry(folder)
    try:
        yield registry
    finally:
        registry.close()
