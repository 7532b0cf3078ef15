"""The models a codex needs, and what the cache (or the disk) holds of each: `soulstone models`."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from soulstone.artifacts.cache import scan_repo
from soulstone.artifacts.checks import integrity_problem, resolve_snapshot
from soulstone.codex.models import Codex
from soulstone.errors import ModelError

Source = Literal["hub", "path"]


@dataclass(frozen=True)
class Need:
    """One model the codex needs: a Hugging Face repo (and revision) or a local model_path."""

    model: str
    source: Source
    revision: str | None
    soulstones: tuple[str, ...]


def needs(codex: Codex) -> list[Need]:
    """Every model the codex's soulstones load, each once, with the soulstones using it.

    A relative model_path is taken from the folder of the codex file that names it.
    """
    users: dict[tuple[Source, str, str | None], list[str]] = {}
    for soulstone in codex.soulstones:
        if soulstone.model is not None:
            key: tuple[Source, str, str | None] = ("hub", soulstone.model, soulstone.revision)
        elif soulstone.model_path:
            folder = os.path.dirname(os.path.abspath(soulstone.file))
            key = ("path", os.path.normpath(os.path.join(folder, soulstone.model_path)), None)
        else:
            continue
        users.setdefault(key, []).append(soulstone.id)
    ordered = sorted(users.items(), key=lambda item: (item[0][1], item[0][2] or ""))
    return [Need(model, source, revision, tuple(ids))
            for (source, model, revision), ids in ordered]  # fmt: skip


@dataclass(frozen=True)
class Report:
    """What is there of a needed model: present or not, commit, folder, size, what is wrong."""

    need: Need
    present: bool
    commit: str | None = None
    path: Path | None = None
    size: int | None = None
    problem: str | None = None

    def summary(self) -> dict[str, object]:
        """The `models --json` record of this model."""
        return {
            "model": self.need.model,
            "source": self.need.source,
            "revision": self.need.revision,
            "commit": self.commit,
            "present": self.present,
            "size": self.size,
            "path": None if self.path is None else str(self.path),
            "soulstones": list(self.need.soulstones),
            "problem": self.problem,
        }


def _local_size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def report(need: Need, cache: Path) -> Report:
    """Look a needed model up: in the Hugging Face cache, or on the disk for a model_path."""
    if need.source == "path":
        path = Path(need.model)
        if not path.exists():
            return Report(need, False, path=path,
                          problem=f"model_path {path} does not exist")  # fmt: skip
        return Report(need, True, path=path, size=_local_size(path))
    try:
        snapshot, how = resolve_snapshot(scan_repo(cache, need.model), need.model,
                                         need.revision, cache)  # fmt: skip
    except ModelError as error:
        return Report(need, False, problem=str(error))
    return Report(need, True, snapshot.commit, snapshot.path, snapshot.size,
                  integrity_problem(need.model, snapshot, how))  # fmt: skip
