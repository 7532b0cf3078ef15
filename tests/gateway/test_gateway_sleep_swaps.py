"""vLLM's sleep mode as the swap: a `sleep = true` soulstone sleeps and wakes instead of
stopping and starting, against a vLLM-shaped fake engine, through the gateway."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx2

from gateway_harness import RunningGateway, StartGateway, fake_codex, fake_table, table_port
from soulstone.runtimes import procfs

VLLM = 'engine = "vllm"\nsleep = true'


def tables(*sleeper_flags: str) -> tuple[str, str]:
    """`a` (vLLM-shaped, sleep = true, group ga) and `b` (group gb): they conflict."""
    sleeper = fake_table("a", *sleeper_flags, model="m-a", group="ga", extra=VLLM)
    other = fake_table("b", model="m-b", group="gb")
    return sleeper, other


def ask(gateway: RunningGateway, model: str) -> str | None:
    answer = gateway.uds_client().chat.completions.create(
        model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=2
    )
    return answer.choices[0].message.content


def states(gateway: RunningGateway) -> dict[str, dict[str, Any]]:
    return {s["id"]: s for s in gateway.http().get("/admin/status").json()["soulstones"]}


def record(table: str) -> list[str]:
    answer = httpx2.get(f"http://127.0.0.1:{table_port(table)}/fake/record")
    return [line for line in answer.json()["record"] if not line.startswith(("begin", "end"))]


def events(gateway: RunningGateway, soulstone: str) -> list[str]:
    return [e["event"] for e in gateway.logged() if e.get("soulstone") == soulstone]


def test_a_swap_puts_a_sleep_soulstone_to_sleep_and_a_request_wakes_it(
    tmp_path: Path, start_gateway: StartGateway
) -> None:
    sleeper, other = tables()
    gateway = start_gateway(fake_codex(tmp_path / "c", sleeper, other))
    assert ask(gateway, "m-a")
    pid = states(gateway)["a"]["pid"]
    assert b"--enable-sleep-mode" in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")

    assert ask(gateway, "m-b")  # b's group takes the GPU: a sleeps, its process runs on
    found = states(gateway)
    assert (found["a"]["state"], found["a"]["pid"]) == ("sleeping", pid)
    assert found["b"]["state"] == "running"
    assert procfs.alive(pid)
    assert record(sleeper) == ["sleep 1"]
    assert "stopping" not in events(gateway, "a")
    cli = gateway.cli("status", "--json")
    assert cli.returncode == 0, cli.stderr
    assert '"sleeping"' in cli.stdout

    assert ask(gateway, "m-a")  # woken, not restarted: the same process answers
    found = states(gateway)
    assert (found["a"]["state"], found["a"]["pid"]) == ("running", pid)
    assert found["b"]["state"] == "stopped"
    assert record(sleeper) == ["sleep 1", "wake"]
    assert events(gateway, "a").count("starting") == 1
    assert {"sleeping", "asleep", "waking", "awake"} <= set(events(gateway, "a"))


def test_a_sleep_that_fails_falls_back_to_a_stop(
    tmp_path: Path, start_gateway: StartGateway
) -> None:
    sleeper, other = tables("--fail-sleep")
    gateway = start_gateway(fake_codex(tmp_path / "c", sleeper, other))
    assert ask(gateway, "m-a")
    pid = states(gateway)["a"]["pid"]
    assert ask(gateway, "m-b")
    assert states(gateway)["a"]["state"] == "stopped"
    assert procfs.wait_gone(pid, None, 30)
    assert events(gateway, "a")[-4:] == ["sleeping", "sleep_failed", "stopping", "stopped"]


def test_a_wake_up_that_fails_falls_back_to_a_restart(
    tmp_path: Path, start_gateway: StartGateway
) -> None:
    sleeper, other = tables("--fail-wake")
    gateway = start_gateway(fake_codex(tmp_path / "c", sleeper, other))
    assert ask(gateway, "m-a")
    pid = states(gateway)["a"]["pid"]
    assert ask(gateway, "m-b")
    assert states(gateway)["a"]["state"] == "sleeping"
    assert ask(gateway, "m-a")  # the wake-up fails: a new engine answers
    found = states(gateway)["a"]
    assert found["state"] == "running" and found["pid"] != pid
    assert procfs.wait_gone(pid, None, 30)
    assert record(sleeper) == []  # the new engine's record: the old one's ended with it
    assert "wake_failed" in events(gateway, "a")
    assert events(gateway, "a").count("starting") == 2
