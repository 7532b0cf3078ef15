"""Remote soulstones with groups swap with local engines; a reload adds and removes remotes.

The "remote" is the fake engine on a local TCP port, started by the test
(a plain OpenAI-compatible server: soulstone neither starts nor stops it).
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest

from gateway_harness import RunningGateway, StartGateway, fake_table
from helpers import write
from remote_helpers import (
    StartRemote,
    remote_calls,
    remote_starter,
    remote_table,
    states,
    wait_probes,
    wait_states,
)
from soulstone.runtimes import procfs


@pytest.fixture
def start_remote() -> Iterator[StartRemote]:
    """Fake engines as remotes, stopped after the test."""
    with remote_starter() as start:
        yield start


def ask(gateway: RunningGateway, model: str) -> httpx2.Response:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    return gateway.http().post("/v1/chat/completions", json=body)


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
    wait_probes(port, 3)  # probes answer meanwhile: none routes the remote again
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
