"""Runtimes by name (the codex's `runtime` field picks one)."""

from __future__ import annotations

from soulstone.runtimes.base import Runtime
from soulstone.runtimes.podman import PodmanRuntime
from soulstone.runtimes.process import DEFAULT_GRACE_S, ProcessRuntime
from soulstone.runtimes.quadlet import QuadletRuntime
from soulstone.runtimes.remote import RemoteRuntime
from soulstone.runtimes.state import StateFolder


def make_runtimes(
    state: StateFolder, grace: float = DEFAULT_GRACE_S, strict: bool = False,
    spare_keeper: bool = False,
) -> dict[str, Runtime]:  # fmt: skip
    """One instance of each runtime, sharing the state folder (strict: containers offline).

    `spare_keeper` (the gateway's): the process runtime keeps a keeper ready for the next start.
    """
    return {
        "process": ProcessRuntime(state, grace=grace, spare_keeper=spare_keeper),
        "podman": PodmanRuntime(state, grace=grace, strict=strict),
        "quadlet": QuadletRuntime(state),
        "remote": RemoteRuntime(),
    }
