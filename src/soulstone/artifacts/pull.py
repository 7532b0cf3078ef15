"""Downloads into the Hugging Face cache: plan (what is missing, how large), room, fetch.

Planning writes nothing to the cache (no ref moves before the files are
there); the download fetches the planned commit file by file, then lets
`snapshot_download` record the ref and huggingface_hub's tree listing.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from soulstone.artifacts.checks import DEFAULT_REF, room_problem, short
from soulstone.errors import ModelError

FileState = Literal["cached", "missing", "damaged"]
Advance = Callable[[int], None]
FreeSpace = Callable[[Path], int]
DOWNLOAD_THREADS = 4
_TRUE = {"1", "on", "yes", "true"}


@dataclass(frozen=True)
class PullFile:
    """One file of the planned commit: its path in the repo, listed size, state in the cache."""

    name: str
    size: int
    state: FileState


@dataclass(frozen=True)
class PullPlan:
    """What pulling a model means now: the commit its revision names, and each file's state."""

    repo: str
    revision: str
    commit: str
    files: tuple[PullFile, ...]
    endpoint: str | None = None

    @property
    def to_fetch(self) -> tuple[PullFile, ...]:
        """The files to download: missing ones, and damaged ones (fetched again)."""
        return tuple(f for f in self.files if f.state != "cached")

    @property
    def download_bytes(self) -> int:
        """How many bytes the download brings."""
        return sum(f.size for f in self.to_fetch)


def offline(env: Mapping[str, str]) -> bool:
    """True when the environment turns huggingface_hub's offline mode on."""
    value = env.get("HF_HUB_OFFLINE") or env.get("TRANSFORMERS_OFFLINE") or ""
    return value.strip().lower() in _TRUE


def _hub_error(error: Exception, repo: str, revision: str, endpoint: str | None) -> ModelError:
    """A huggingface_hub or HTTP error as a ModelError that says what happened and what to do."""
    import httpx2
    from huggingface_hub import constants
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    endpoint = endpoint or constants.ENDPOINT
    if isinstance(error, (httpx2.TransportError, OfflineModeIsEnabled)):
        return ModelError(
            f"no network: cannot reach the Hugging Face Hub at {endpoint} "
            f"({type(error).__name__}: {error}), so {repo} cannot be pulled here: pull it "
            "where a network exists and copy the cache folder, or set HF_ENDPOINT to a mirror"
        )
    if isinstance(error, RevisionNotFoundError):
        return ModelError(f"{endpoint} has no revision {revision!r} of {repo}: check `revision`")
    if isinstance(error, GatedRepoError):
        return ModelError(f"{repo} on {endpoint} is gated: accept its terms on the Hub and log "
                          "in with `hf auth login`")  # fmt: skip
    if isinstance(error, RepositoryNotFoundError):
        return ModelError(f"{endpoint} has no model {repo} (or it is private: log in with "
                          "`hf auth login`)")  # fmt: skip
    if isinstance(error, HfHubHTTPError):
        return ModelError(f"the Hub at {endpoint} refused {repo}: {error}")
    return ModelError(f"cannot pull {repo}: {type(error).__name__}: {error}")


def plan_pull(
    cache: Path,
    repo: str,
    revision: str | None,
    env: Mapping[str, str] | None = None,
    endpoint: str | None = None,
) -> PullPlan:
    """Ask the Hub which commit a revision names and what its files are; compare with the cache.

    Writes nothing. ModelError says plainly when there is no network
    (or offline mode is on), or the Hub has no such model or revision.
    `endpoint` defaults to huggingface_hub's (`$HF_ENDPOINT`, else the Hub).
    """
    wanted = revision or DEFAULT_REF
    if offline(os.environ if env is None else env):
        raise ModelError(
            f"offline mode is on (HF_HUB_OFFLINE): soulstone will not download {repo}; "
            "unset HF_HUB_OFFLINE to pull"
        )
    import httpx2
    from huggingface_hub import HfApi, try_to_load_from_cache
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled
    from huggingface_hub.hf_api import RepoFile

    api = HfApi(endpoint=endpoint)
    try:
        commit = api.repo_info(repo, revision=wanted).sha
        assert commit is not None, "the Hub answers repo_info with a commit"
        tree = [
            f for f in api.list_repo_tree(repo, recursive=True, revision=commit)
            if isinstance(f, RepoFile)
        ]  # fmt: skip
    except (httpx2.TransportError, OfflineModeIsEnabled, HfHubHTTPError) as error:
        raise _hub_error(error, repo, wanted, endpoint) from None
    files = []
    for entry in sorted(tree, key=lambda f: f.path):
        found = try_to_load_from_cache(repo, entry.path, cache_dir=cache, revision=commit)
        state: FileState = "missing"
        if isinstance(found, str):
            state = "cached" if os.path.getsize(found) == entry.size else "damaged"
        files.append(PullFile(entry.path, entry.size, state))
    return PullPlan(repo, wanted, commit, tuple(files), endpoint)


def free_bytes(path: Path) -> int:
    """Bytes free for us on the disk that holds this path (or its nearest existing parent)."""
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return shutil.disk_usage(probe).free


def _progress_class(advance: Advance) -> type:
    """A tqdm look-alike for huggingface_hub's downloads, reporting each byte count to `advance`.

    huggingface_hub accepts any class that mimics tqdm (as its own
    `_AggregatedTqdm` does); this one keeps only the byte counts.
    """

    class Progress:
        def __init__(self, *_args: Any, **kwargs: Any) -> None:
            self.n = 0
            self.total = kwargs.get("total")
            if initial := kwargs.get("initial"):
                self.update(initial)

        def update(self, n: float | None = 1) -> None:
            step = int(n or 0)
            self.n += step
            advance(step)

        def update_transfer(self, n: float | None = 1) -> None:
            """Network bytes of a Xet download; `update` already counts what lands on disk."""

        def set_postfix_str(self, *_args: Any, **_kwargs: Any) -> None: ...

        def set_transfer_postfix_str(self, *_args: Any, **_kwargs: Any) -> None: ...

        def set_description(self, *_args: Any, **_kwargs: Any) -> None: ...

        def set_description_str(self, *_args: Any, **_kwargs: Any) -> None: ...

        def refresh(self, *_args: Any, **_kwargs: Any) -> None: ...

        def close(self) -> None: ...

        def __enter__(self) -> Progress:
            return self

        def __exit__(self, *_exc: object) -> None:
            return None

    return Progress


def pull(
    plan: PullPlan,
    cache: Path,
    advance: Advance = lambda _n: None,
    free_space: FreeSpace = free_bytes,
) -> Path:
    """Download what the plan lacks into the cache; return the snapshot folder.

    Refused (ModelError) when the disk cannot hold the download plus 20 %.
    Each byte written is reported to `advance`.
    """
    problem = room_problem(plan.repo, plan.download_bytes, free_space(cache), cache)
    if problem is not None:
        raise ModelError(problem)
    import httpx2
    from huggingface_hub import hf_hub_download, snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    cache.mkdir(mode=0o700, parents=True, exist_ok=True)
    bar, quiet = _progress_class(advance), _progress_class(lambda _n: None)

    def fetch(file: PullFile) -> None:
        hf_hub_download(plan.repo, file.name, revision=plan.commit, cache_dir=cache,
                        endpoint=plan.endpoint, tqdm_class=bar,
                        force_download=file.state == "damaged")  # fmt: skip

    try:
        with ThreadPoolExecutor(DOWNLOAD_THREADS) as pool:
            list(pool.map(fetch, plan.to_fetch))
        # Every file is there now: this records the ref and the tree listing.
        folder = Path(snapshot_download(plan.repo, revision=plan.revision, cache_dir=cache,
                                        endpoint=plan.endpoint, tqdm_class=quiet))  # fmt: skip
    except (httpx2.TransportError, OfflineModeIsEnabled, HfHubHTTPError) as error:
        raise _hub_error(error, plan.repo, plan.revision, plan.endpoint) from None
    if folder.name != plan.commit:
        raise ModelError(
            f"{plan.revision!r} of {plan.repo} moved on the Hub during the pull (from "
            f"{short(plan.commit)} to {short(folder.name)}): run the pull again"
        )
    return folder
