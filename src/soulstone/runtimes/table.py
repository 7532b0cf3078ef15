"""Runtimes by name (the codex's `runtime` field picks one)."""

from __future__ import annotations

from soulstone.runtimes.base import Runtime
from soulstone.runtimes.podman import PodmanRuntime
from soulstone.runtimes.process import DEFAULT_GRACE_S, ProcessRuntime
from soulstone.runtimes.quadlet import QuadletRuntime
from soulstone.runtimes.remote import RemoteRuntime
from soulstone.runtimes.state import StateFolder


def make_runtimes(
    state: StateFolder, grace: float = DEFAULT_GRACE_S, strict: bool = False
) -> dict[str, Runtime]:
    """One instance of each runtime, sharing the state folder (strict: containers offline)."""
    return {
        "process": ProcessRuntime(state, grace=grace),
        "podman": PodmanRuntime(state, grace=grace, strict=strict),
        "quadlet": QuadletRuntime(state),
        "remote": RemoteRuntime(),
    }
