"""The checks before an engine starts (SPEC C10): the model is there, pinned, whole, private."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from soulstone.artifacts.cache import cache_mode, hub_cache, scan_repo
from soulstone.artifacts.checks import usable_snapshot
from soulstone.codex.models import Soulstone
from soulstone.errors import ModelError


def strict_mode_problem(cache: Path) -> str | None:
    """Why the cache folder fails strict mode (it must be 0700), or None."""
    mode = cache_mode(cache)
    if mode is None or mode == 0o700:
        return None
    return (
        f"the Hugging Face cache {cache} has mode {mode:04o}, and strict mode wants 0700 "
        f"(nobody else reads the weights): run `chmod 700 {cache}`"
    )


@dataclass(frozen=True)
class Preflight:
    """Checks a soulstone's model before its start and hands the engine the snapshot folder.

    A soulstone without `model` passes unchanged. One with `model` comes back
    with `model_path` set to the snapshot its revision names (default: the one
    `refs/main` points at), after the quick checks: present, the pinned one,
    every listed file there with its listed size, and (strict mode) a 0700
    cache. Anything else raises ModelError naming the model and what to do.
    Blocking (it scans the cache): call it off the event loop.
    """

    cache: Path
    strict: bool = False

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, strict: bool = False) -> Preflight:
        """Checks against the cache the environment names (default: os.environ)."""
        return cls(hub_cache(os.environ if env is None else env), strict)

    def __call__(self, soulstone: Soulstone) -> Soulstone:
        """The soulstone ready to start; ModelError when its model is not fit to."""
        if soulstone.model is None:
            return soulstone
        if self.strict and (problem := strict_mode_problem(self.cache)) is not None:
            raise ModelError(problem)
        try:
            facts = scan_repo(self.cache, soulstone.model)
        except OSError as error:
            raise ModelError(f"cannot read the Hugging Face cache {self.cache} for model "
                             f"{soulstone.model}: {error}") from None  # fmt: skip
        snapshot = usable_snapshot(facts, soulstone.model, soulstone.revision, self.cache)
        return replace(soulstone, model_path=str(snapshot.path))
