"""Reload: an invalid codex keeps the running one; a changed one restarts only what changed."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path
from typing import Any

from gateway_harness import RunningGateway, StartGateway, fake_codex, fake_table
from soulstone.runtimes import procfs


def wait_for_event(gateway: RunningGateway, event: str, count: int = 1) -> dict[str, Any]:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        found = [e for e in gateway.logged() if e.get("event") == event]
        if len(found) >= count:
            return found[count - 1]
        time.sleep(0.05)
    raise AssertionError(f"no {event!r} in the gateway's log")


def ask(gateway: RunningGateway, model: str) -> dict[str, Any]:
    response = gateway.http().post("/v1/chat/completions", json={"model": model})
    assert response.status_code == 200, response.text
    return dict(response.json())


def engine_pid(gateway: RunningGateway, soulstone: str) -> int:
    return int(json.loads(gateway.state.keeper(soulstone).read_text())["pid"])


def test_invalid_codex_keeps_serving(tmp_path: Path, start_gateway: StartGateway) -> None:
    codex = fake_codex(tmp_path / "c", fake_table("a", model="m"))
    gateway = start_gateway(codex)
    ask(gateway, "m")
    (codex / "broken.toml").write_text("[x]\nport = \n")
    answer = gateway.http().post("/admin/reload")
    assert answer.status_code == 422
    document = answer.json()
    assert document["reloaded"] is False
    assert document["errors"][0]["file"].endswith("broken.toml")
    gateway.signal(signal.SIGHUP)
    wait_for_event(gateway, "reload refused: the codex is invalid; the running one stays", 2)
    ask(gateway, "m")  # still serving the running codex
    assert gateway.process.poll() is None


def test_sighup_restarts_only_what_changed(tmp_path: Path, start_gateway: StartGateway) -> None:
    a = fake_table("a", model="m-a", group="g")
    b = fake_table("b", model="m-b", group="g")
    codex = fake_codex(tmp_path / "c", a, b)
    gateway = start_gateway(codex)
    ask(gateway, "m-a")
    ask(gateway, "m-b")
    a_pid, b_pid = engine_pid(gateway, "a"), engine_pid(gateway, "b")
    changed_b = b.replace('"--model", "m-b"', '"--model", "m-b", "--tokens", "3"')
    assert changed_b != b
    (codex / "fake.toml").write_text(a + "\n" + changed_b)
    gateway.signal(signal.SIGHUP)
    reloaded = wait_for_event(gateway, "reloaded the codex")
    assert reloaded["changed"] == ["b"]
    assert reloaded["stopped"] == ["b"]
    assert engine_pid(gateway, "a") == a_pid and procfs.alive(a_pid)
    assert not procfs.alive(b_pid)
    answer = ask(gateway, "m-b")
    assert answer["choices"][0]["message"]["content"] == "tok0 tok1 tok2"  # the new declaration
    assert engine_pid(gateway, "b") != b_pid
    assert engine_pid(gateway, "a") == a_pid


def test_admin_reload_adds_and_removes_models(tmp_path: Path, start_gateway: StartGateway) -> None:
    codex = fake_codex(tmp_path / "c", fake_table("a", model="m-a", group="g"))
    gateway = start_gateway(codex)
    ask(gateway, "m-a")
    (codex / "fake.toml").write_text(fake_table("n", model="m-new", group="g"))
    document = gateway.http().post("/admin/reload").json()
    assert document == {"reloaded": True, "changed": ["a"], "stopped": ["a"]}
    ask(gateway, "m-new")
    gone = gateway.http().post("/v1/chat/completions", json={"model": "m-a"})
    assert gone.status_code == 404
