"""Fake engines as remote soulstones (SPEC C12): start them, declare them, watch their state."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import httpx2

from gateway_harness import RunningGateway
from helpers import FAKE_ENGINE, free_port, terminate

StartRemote = Callable[..., int]


@contextmanager
def remote_starter() -> Iterator[StartRemote]:
    """Start fake engines as remotes (a model name, flags): each one's port. Stopped after."""
    started: list[subprocess.Popen[bytes]] = []

    def start(model: str, *flags: str) -> int:
        port = free_port()
        process = subprocess.Popen([sys.executable, str(FAKE_ENGINE), "--model", model, *flags,
                                    "--port", str(port)], stdout=subprocess.DEVNULL)  # fmt: skip
        started.append(process)
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx2.get(f"http://127.0.0.1:{port}/health").status_code == 200:
                    return port
            except httpx2.TransportError:
                pass
            assert process.poll() is None and time.monotonic() < deadline, "no fake remote"
            time.sleep(0.05)

    try:
        yield start
    finally:
        for process in started:
            terminate(process, 10)


def remote_table(table: str, port: int, models: str, extra: str = "") -> str:
    """A remote soulstone at the fake engine on this port, probed every 0.1 s."""
    return (f'[{table}]\nremote = "http://127.0.0.1:{port}/v1"\nmodels = {models}\n'
            f"health = {{ interval = 0.1 }}\n{extra}")  # fmt: skip


def remote_calls(port: int) -> list[dict[str, Any]]:
    """The chat calls the fake remote on this port answered."""
    return list(httpx2.get(f"http://127.0.0.1:{port}/fake/calls").json()["calls"])


def states(gateway: RunningGateway) -> dict[str, str]:
    """Each listed model's engine_state in /v1/models (councils left out)."""
    listed = gateway.http().get("/v1/models").json()["data"]
    return {m["id"]: m.get("engine_state") for m in listed if not m["id"].startswith("council/")}


def wait_states(gateway: RunningGateway, wanted: dict[str, str], limit: float = 30) -> None:
    """Wait until /v1/models shows exactly these models in these states (fail after `limit`)."""
    deadline = time.monotonic() + limit
    while (found := states(gateway)) != wanted:
        assert time.monotonic() < deadline, f"models stayed {found}, not {wanted}"
        time.sleep(0.05)


def probes_answered(port: int) -> int:
    """How many health probes the fake remote on this port has answered."""
    return int(httpx2.get(f"http://127.0.0.1:{port}/fake/stats").json()["health"])


def wait_probes(port: int, more: int, limit: float = 30) -> None:
    """Wait until the fake remote has answered `more` further health probes."""
    target = probes_answered(port) + more
    deadline = time.monotonic() + limit
    while probes_answered(port) < target:
        assert time.monotonic() < deadline, "the remote was not probed"
        time.sleep(0.05)
