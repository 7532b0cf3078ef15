"""Pure decisions about cached models: which snapshot a reference names, and what is wrong.

No silent downgrade: a reference names exactly one snapshot (the pinned
commit, or the commit its ref points at), and when that one is absent or not
whole, the answer is an error, never another snapshot of the same repo.
"""

from __future__ import annotations

import math
from pathlib import Path

from soulstone.artifacts.facts import RepoFacts, Snapshot
from soulstone.codex.references import COMMIT_RE
from soulstone.errors import ModelError

DEFAULT_REF = "main"
HEADROOM = 1.2  # a download needs the model's size plus 20 % free on the cache's disk


def short(commit: str) -> str:
    """A commit hash shortened for messages."""
    return commit[:12]


def pull_hint(repo: str) -> str:
    """What to run to fetch a model."""
    return f"run `soulstone models pull {repo}`"


def holdings(facts: RepoFacts) -> str:
    """The snapshots a cached repo holds, each with the refs that point at it."""
    if not facts.snapshots:
        return "no snapshot"
    by_commit: dict[str, list[str]] = {}
    for ref, commit in sorted(facts.refs.items()):
        by_commit.setdefault(commit, []).append(ref)
    parts = []
    for commit in sorted(facts.snapshots):
        refs = by_commit.get(commit)
        parts.append(short(commit) + (f" ({', '.join(refs)})" if refs else ""))
    return "only " + ", ".join(parts)


def resolve_snapshot(
    facts: RepoFacts | None, repo: str, revision: str | None, cache: Path
) -> tuple[Snapshot, str]:
    """The snapshot a reference names, and how (`the pinned revision`, `refs/main`).

    Raises ModelError when the repo is not cached, is damaged, or lacks that snapshot.
    """
    if facts is None:
        raise ModelError(
            f"model {repo} is not in the Hugging Face cache ({cache}): {pull_hint(repo)}"
        )
    if facts.damage is not None:
        raise ModelError(
            f"the Hugging Face cache entry of {repo} is damaged ({facts.damage}): "
            f"{pull_hint(repo)} to repair it"
        )
    wanted = revision or DEFAULT_REF
    if COMMIT_RE.fullmatch(wanted):
        snapshot = facts.snapshots.get(wanted)
        if snapshot is None:
            raise ModelError(
                f"model {repo} is pinned to revision {wanted}, which is not in the cache (it "
                f"holds {holdings(facts)}): {pull_hint(repo)} to fetch it; soulstone does not "
                "start another snapshot in its place"
            )
        return snapshot, "the pinned revision"
    commit = facts.refs.get(wanted)
    if commit is None or commit not in facts.snapshots:
        if revision is None:
            raise ModelError(
                f"model {repo} has no '{DEFAULT_REF}' ref in the cache (it holds "
                f'{holdings(facts)}): pin one of those with revision = "<commit hash>", '
                f"or {pull_hint(repo)}"
            )
        raise ModelError(
            f"model {repo}: revision {wanted!r} is not in the cache (it holds "
            f"{holdings(facts)}): {pull_hint(repo)} to fetch it (a commit hash needs all "
            "40 characters)"
        )
    return facts.snapshots[commit], f"refs/{wanted} points at it"


def integrity_problem(repo: str, snapshot: Snapshot, how: str) -> str | None:
    """What makes a snapshot unfit to start, by the quick checks; None when it looks whole.

    Files that huggingface_hub's tree listing names must all be there, and
    each blob must have the listed size (hashes are `models verify`'s job).
    """
    if snapshot.missing:
        sample = ", ".join(snapshot.missing[:3])
        more = f" and {len(snapshot.missing) - 3} more" if len(snapshot.missing) > 3 else ""
        return (
            f"model {repo}: the snapshot {short(snapshot.commit)} ({how}) lacks "
            f"{len(snapshot.missing)} listed file(s) ({sample}{more}), an interrupted "
            f"download? {pull_hint(repo)}; soulstone does not start another snapshot in its place"
        )
    for file in sorted(snapshot.files, key=lambda f: f.name):
        if file.expected_size is not None and file.size != file.expected_size:
            return (
                f"model {repo}: {file.name} in snapshot {short(snapshot.commit)} has "
                f"{file.size} bytes where huggingface_hub's listing says {file.expected_size}: "
                f"the file is damaged; delete {file.blob} and {pull_hint(repo)}"
            )
    return None


def usable_snapshot(
    facts: RepoFacts | None, repo: str, revision: str | None, cache: Path
) -> Snapshot:
    """The snapshot an engine may start on; ModelError when it is absent or not whole."""
    snapshot, how = resolve_snapshot(facts, repo, revision, cache)
    problem = integrity_problem(repo, snapshot, how)
    if problem is not None:
        raise ModelError(problem)
    return snapshot


def needed_bytes(download_bytes: int) -> int:
    """Free space a download of this size needs: the size plus 20 %."""
    return math.ceil(download_bytes * HEADROOM)


def room_problem(repo: str, download_bytes: int, free_bytes: int, cache: Path) -> str | None:
    """Why a download does not fit on the cache's disk, or None when it does."""
    need = needed_bytes(download_bytes)
    if free_bytes >= need:
        return None
    return (
        f"not enough disk space to pull {repo} into {cache}: the download is "
        f"{human_size(download_bytes)}, which needs {human_size(need)} free (its size plus 20 %), "
        f"and {human_size(free_bytes)} is free: free some space or point HF_HUB_CACHE elsewhere"
    )


def human_size(size: int) -> str:
    """A byte count for people: `3.3 MiB`."""
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")
