"""Remote soulstones with groups swap with local engines; a reload adds and removes remotes.

The "remote" is the fake engine on a local TCP port, started by the test
(a plain OpenAI-compatible server: soulstone neither starts nor stops it).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest

from gateway_harness import RunningGateway, StartGateway, fake_table
from helpers import FAKE_ENGINE, free_port, terminate, write
from soulstone.runtimes import procfs

StartRemote = Callable[..., int]


@pytest.fixture
def start_remote() -> Iterator[StartRemote]:
    """Start fake engines as remotes (a model name, flags); each one's port. Stopped after."""
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


def states(gateway: RunningGateway) -> dict[str, str]:
    """Each listed model's engine_state in /v1/models."""
    listed = gateway.http().get("/v1/models").json()["data"]
    return {m["id"]: m.get("engine_state") for m in listed if not m["id"].startswith("council/")}


def wait_states(gateway: RunningGateway, wanted: dict[str, str], limit: float = 30) -> None:
    deadline = time.monotonic() + limit
    while (found := states(gateway)) != wanted:
        assert time.monotonic() < deadline, f"models stayed {found}, not {wanted}"
        time.sleep(0.05)


def ask(gateway: RunningGateway, model: str) -> httpx2.Response:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    return gateway.http().post("/v1/chat/completions", json=body)


def remote_calls(port: int) -> list[dict[str, Any]]:
    return list(httpx2.get(f"http://127.0.0.1:{port}/fake/calls").json()["calls"])


def engine_pid(gateway: RunningGateway, soulstone: str) -> int:
    return int(json.loads(gateway.state.keeper(soulstone).read_text())["pid"])


def test_a_remote_with_groups_swaps_with_a_conflicting_local_engine(
    tmp_path: Path, start_gateway: StartGateway, start_remote: StartRemote
) -> None:
    port = start_remote("rm")
    near = fake_table("near", model="lm")  # solitary: conflicts with the remote in group box
    mate = fake_table("mate", model="mm", group="box")  # shares box: runs beside the remote
    far = remote_table("far", port, '["rm"]', 'groups = ["box"]\n')
    codex = write(tmp_path / "c", {"c.toml": far + near + mate})
    checked = subprocess.run([str(Path(sys.executable).parent / "soulstone"), "--codex",
                              str(codex), "check", "--json"], capture_output=True, text=True,
                             timeout=60, check=True)  # fmt: skip
    assert json.loads(checked.stdout)["conflicts"] == [["far", "near"], ["mate", "near"]]
    gateway = start_gateway(codex)
    wait_states(gateway, {"rm": "running", "lm": "stopped", "mm": "stopped"})
    assert ask(gateway, "mm").status_code == 200  # same group: nothing is swapped out
    assert states(gateway) == {"rm": "running", "lm": "stopped", "mm": "running"}
    assert ask(gateway, "rm").status_code == 200
    assert len(remote_calls(port)) == 1

    assert ask(gateway, "lm").status_code == 200  # near takes over: the remote is not routed
    near_pid = engine_pid(gateway, "near")
    assert states(gateway) == {"rm": "stopped", "lm": "running", "mm": "stopped"}
    time.sleep(0.5)  # several probes answer meanwhile: none routes the remote again
    assert states(gateway)["rm"] == "stopped"
    assert len(remote_calls(port)) == 1

    answer = ask(gateway, "rm")  # swaps back: near is stopped, the remote routed again
    assert answer.status_code == 200, answer.text
    assert len(remote_calls(port)) == 2
    assert states(gateway) == {"rm": "running", "lm": "stopped", "mm": "stopped"}
    assert not procfs.alive(near_pid)
    stops = [e for e in gateway.logged() if e.get("event") == "stopping"]
    assert [e.get("soulstone") for e in stops][-1] == "near"


def test_reload_adds_a_discovering_remote_and_removes_one(
    tmp_path: Path, start_gateway: StartGateway, start_remote: StartRemote
) -> None:
    first, second = start_remote("first-model"), start_remote("second-model")
    local = fake_table("local", model="lm", group="g")
    codex = write(tmp_path / "c", {"c.toml": local + remote_table("one", first, '"discover"')})
    gateway = start_gateway(codex)
    wait_states(gateway, {"lm": "stopped", "first-model": "running"})
    assert ask(gateway, "first-model").status_code == 200

    (codex / "c.toml").write_text(local + remote_table("two", second, '"discover"'))
    document = gateway.http().post("/admin/reload").json()
    assert document["reloaded"] is True and document["changed"] == ["one"]
    wait_states(gateway, {"lm": "stopped", "second-model": "running"})
    assert ask(gateway, "second-model").status_code == 200
    assert len(remote_calls(second)) == 1
    gone = ask(gateway, "first-model")
    assert gone.status_code == 404 and gone.json()["error"]["code"] == "MODEL_NOT_FOUND"
    assert len(remote_calls(first)) == 1
