"""Looking at engines the gateway restarts: their pids, the restart metric, the admin status."""

from __future__ import annotations

import json
import os
import select
import time
from collections.abc import Callable
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from gateway_harness import RunningGateway


def kept(gateway: RunningGateway, soulstone: str) -> dict[str, Any]:
    """The keeper's record of the soulstone's last start (pids, state, exit code)."""
    return dict(json.loads(gateway.state.keeper(soulstone).read_text()))


def engine_pid(gateway: RunningGateway, soulstone: str) -> int:
    """The pid of the soulstone's engine as its keeper recorded it."""
    return int(kept(gateway, soulstone)["pid"])


def restarts(gateway: RunningGateway, soulstone: str) -> float:
    """`soulstone_engine_restarts_total` for this soulstone (0 when never counted)."""
    with gateway.tcp() as admin:
        text = admin.get("/metrics").text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if (sample.name == "soulstone_engine_restarts_total"
                    and sample.labels.get("soulstone") == soulstone):  # fmt: skip
                return float(sample.value)
    return 0.0


def admin_status(gateway: RunningGateway) -> dict[str, Any]:
    """The gateway's admin status document (soulstones, and the last reload)."""
    with gateway.tcp() as admin:
        answer = admin.get("/admin/status")
    assert answer.status_code == 200, answer.text
    return dict(answer.json())


def status_of(gateway: RunningGateway, soulstone: str) -> dict[str, Any]:
    """One soulstone's record in the admin status."""
    found = [s for s in admin_status(gateway)["soulstones"] if s["id"] == soulstone]
    assert found, f"no {soulstone} in the status"
    return dict(found[0])


def wait_until(condition: Callable[[], bool], what: str, seconds: float = 30) -> None:
    """Look again (every 20 ms) until the condition holds; fail naming `what` after `seconds`."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {seconds:g} s")
        time.sleep(0.02)


def wait_gone(pid: int, seconds: float = 15) -> None:
    """Wait until the process ended with all its threads (its pidfd says so): sockets closed.

    A zombie leader is not enough: the other threads of an engine such as
    llama-server may still hold its listening socket open for a moment.
    """
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return  # reaped already
    try:
        ready, _, _ = select.select([fd], [], [], seconds)
    finally:
        os.close(fd)
    assert ready, f"process {pid} still runs after {seconds:g} s"
