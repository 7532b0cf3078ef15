"""Full integrity check of a cached repo: every blob hashed against the hash its name promises.

huggingface_hub names an LFS blob by the sha256 of its content and any other
blob by its git blob id (sha1 of `blob <size>\\0` + content); both are
checked. A blob with another name (a mirror's ETag) is listed as unchecked.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from soulstone.artifacts.cache import scan_repo
from soulstone.artifacts.checks import integrity_problem, pull_hint, resolve_snapshot
from soulstone.errors import ModelError

HashKind = Literal["sha256", "git-sha1", "unchecked"]
Advance = Callable[[int], None]
CHUNK = 1 << 20
_SHA256 = re.compile(r"[0-9a-f]{64}")
_SHA1 = re.compile(r"[0-9a-f]{40}")


def hash_kind(blob_name: str) -> HashKind:
    """Which hash a blob's file name is: sha256 (LFS), git blob sha1, or neither."""
    if _SHA256.fullmatch(blob_name):
        return "sha256"
    if _SHA1.fullmatch(blob_name):
        return "git-sha1"
    return "unchecked"


def blob_hash(path: Path, kind: HashKind, advance: Advance = lambda _n: None) -> str | None:
    """The hash of a blob's content of this kind (None for unchecked); reads it all."""
    if kind == "unchecked":
        return None
    digest = hashlib.sha256() if kind == "sha256" else hashlib.sha1(usedforsecurity=False)
    if kind == "git-sha1":
        digest.update(b"blob %d\0" % path.stat().st_size)
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
            advance(len(chunk))
    return digest.hexdigest()


@dataclass(frozen=True)
class BlobCheck:
    """One blob: a file that uses it, the hash its name promises, the hash its content has."""

    file: str
    blob: Path
    kind: HashKind
    actual: str | None

    @property
    def ok(self) -> bool:
        """True when the content matches the name (or the name promises no hash)."""
        return self.kind == "unchecked" or self.actual == self.blob.name

    def summary(self) -> dict[str, object]:
        """The `models verify --json` record of this blob."""
        return {"file": self.file, "blob": str(self.blob), "kind": self.kind,
                "expected": None if self.kind == "unchecked" else self.blob.name,
                "actual": self.actual, "ok": self.ok}  # fmt: skip


@dataclass(frozen=True)
class Verdict:
    """A repo's verification: the snapshot checked, a quick-check problem, each blob."""

    repo: str
    commit: str
    problem: str | None
    blobs: tuple[BlobCheck, ...]

    @property
    def ok(self) -> bool:
        """True when nothing is wrong."""
        return self.problem is None and all(b.ok for b in self.blobs)

    def messages(self) -> list[str]:
        """One line for each thing wrong, saying what to do."""
        lines = [self.problem] if self.problem else []
        for check in self.blobs:
            if not check.ok:
                lines.append(
                    f"model {self.repo}: {check.file} is corrupt (its blob's {check.kind} is "
                    f"{check.actual}, its name says {check.blob.name}): delete {check.blob} "
                    f"and {pull_hint(self.repo)}"
                )
        return lines

    def summary(self) -> dict[str, object]:
        """The `models verify --json` record of this repo."""
        return {"model": self.repo, "commit": self.commit, "ok": self.ok,
                "problems": self.messages(),
                "blobs": [b.summary() for b in self.blobs]}  # fmt: skip


def verify_model(
    cache: Path, repo: str, revision: str | None, advance: Advance = lambda _n: None
) -> Verdict:
    """Hash every blob of the snapshot a reference names; ModelError when there is none.

    Blocking and slow (it reads every byte): each byte read goes to `advance`.
    """
    snapshot, how = resolve_snapshot(scan_repo(cache, repo), repo, revision, cache)
    checks = []
    for file in snapshot.files:
        kind = hash_kind(file.blob.name)
        try:
            actual = blob_hash(file.blob, kind, advance)
        except OSError as error:
            raise ModelError(f"model {repo}: cannot read {file.blob}: {error.strerror}") from None
        checks.append(BlobCheck(file.name, file.blob, kind, actual))
    problem = integrity_problem(repo, snapshot, how)
    return Verdict(repo, snapshot.commit, problem, tuple(checks))


def snapshot_bytes(cache: Path, repo: str, revision: str | None) -> int:
    """How many bytes `verify_model` will read (for a progress bar)."""
    snapshot, _how = resolve_snapshot(scan_repo(cache, repo), repo, revision, cache)
    return sum(file.size for file in snapshot.files)
