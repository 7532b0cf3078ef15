"""The Hugging Face cache: where it is, and what huggingface_hub's own scan finds for a repo.

huggingface_hub is imported here, in the functions, never at module level:
only a codex that names a `model` pays for it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from soulstone.artifacts.facts import CachedFile, RepoFacts, Snapshot

if TYPE_CHECKING:
    from huggingface_hub import CachedRepoInfo, CachedRevisionInfo


def hub_cache(env: Mapping[str, str]) -> Path:
    """The hub cache folder, found as huggingface_hub finds it.

    `$HF_HUB_CACHE` (or the older `$HUGGINGFACE_HUB_CACHE`), else
    `$HF_HOME/hub`, else `$XDG_CACHE_HOME/huggingface/hub`, else
    `~/.cache/huggingface/hub`.
    """
    home = Path(env.get("HOME") or Path.home())

    def expand(value: str) -> Path:
        return home / value[2:] if value.startswith("~/") else Path(value)

    if hub := env.get("HF_HUB_CACHE") or env.get("HUGGINGFACE_HUB_CACHE"):
        return expand(hub)
    if hf_home := env.get("HF_HOME"):
        return expand(hf_home) / "hub"
    base = expand(env["XDG_CACHE_HOME"]) if env.get("XDG_CACHE_HOME") else home / ".cache"
    return base / "huggingface" / "hub"


def repo_folder(cache: Path, repo: str) -> Path:
    """The folder huggingface_hub keeps a model repo in (`models--org--name`)."""
    from huggingface_hub.file_download import repo_folder_name

    return cache / repo_folder_name(repo_id=repo, repo_type="model")


def _listing(cache: Path, repo: str, commit: str) -> dict[str, int] | None:
    """File sizes from the tree listing huggingface_hub cached for a commit, or None."""
    from huggingface_hub import get_cached_repo_tree
    from huggingface_hub.errors import CachedRepoTreeNotFoundError

    try:
        files = get_cached_repo_tree(repo, revision=commit, cache_dir=cache)
    except CachedRepoTreeNotFoundError:
        return None
    return {file.path: file.size for file in files}


def _snapshot(cache: Path, repo: str, revision: CachedRevisionInfo) -> Snapshot:
    listing = _listing(cache, repo, revision.commit_hash)
    files = []
    for file in revision.files:
        name = file.file_path.relative_to(revision.snapshot_path).as_posix()
        expected = listing.get(name) if listing is not None else None
        files.append(CachedFile(name, file.blob_path, file.size_on_disk, expected))
    names = {file.name for file in files}
    missing = tuple(sorted(set(listing) - names)) if listing is not None else ()
    return Snapshot(
        commit=revision.commit_hash,
        path=revision.snapshot_path,
        size=revision.size_on_disk,
        files=tuple(sorted(files, key=lambda f: f.name)),
        missing=missing,
        listed=listing is not None,
    )


def _facts(cache: Path, repo: str, info: CachedRepoInfo) -> RepoFacts:
    refs = {ref: r.commit_hash for r in info.revisions for ref in r.refs}
    snapshots = {r.commit_hash: _snapshot(cache, repo, r) for r in info.revisions}
    return RepoFacts(repo, info.repo_path, refs, snapshots)


def scan_repo(cache: Path, repo: str) -> RepoFacts | None:
    """What huggingface_hub's cache scan finds for a model repo; None when it is not cached.

    A repo the scan cannot read (a blob missing behind a snapshot file, a ref
    to a commit with no snapshot) comes back with `damage` set.
    """
    from huggingface_hub import scan_cache_dir

    folder = repo_folder(cache, repo)
    if not folder.is_dir():
        return None
    found = scan_cache_dir(cache)
    for info in found.repos:
        if info.repo_type == "model" and info.repo_id == repo:
            return _facts(cache, repo, info)
    resolved = str(folder.resolve())
    for warning in found.warnings:
        text = str(warning)
        if resolved + os.sep in text or resolved + ")" in text or text.endswith(resolved):
            return RepoFacts(repo, folder, {}, {}, damage=text)
    return None


def cache_mode(cache: Path) -> int | None:
    """The permission bits of the cache folder, or None when it does not exist."""
    try:
        return os.stat(cache).st_mode & 0o777
    except FileNotFoundError:
        return None
