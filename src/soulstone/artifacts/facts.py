"""What the Hugging Face cache holds for one repo, as plain values (filled by `cache.scan_repo`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class CachedFile:
    """One file of a snapshot: its path in the repo, its blob, the blob's size on disk.

    `expected_size` is the size huggingface_hub's cached tree listing gives,
    None where no listing was written (caches filled file by file).
    """

    name: str
    blob: Path
    size: int
    expected_size: int | None = None


@dataclass(frozen=True)
class Snapshot:
    """One cached commit of a repo: its folder, files, and the listed files it lacks."""

    commit: str
    path: Path
    size: int
    files: tuple[CachedFile, ...]
    missing: tuple[str, ...] = ()
    listed: bool = False


@dataclass(frozen=True)
class RepoFacts:
    """A cached model repo: refs (name to commit) and snapshots (by commit).

    `damage` is huggingface_hub's complaint when it could not scan the repo
    (a blob missing behind a snapshot file, a ref to a commit with no
    snapshot); refs and snapshots are then empty.
    """

    repo: str
    folder: Path
    refs: Mapping[str, str]
    snapshots: Mapping[str, Snapshot]
    damage: str | None = None
