"""Engines that die or cannot start (SPEC C10): restarts, failed marks, out of memory, fallback."""

from __future__ import annotations

import json
import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx2

from gateway_harness import (
    RunningGateway,
    StartGateway,
    fake_codex,
    fake_engine_calls,
    fake_table,
)
from recovery_helpers import (
    admin_status,
    engine_pid,
    restarts,
    status_of,
    wait_gone,
    wait_until,
)
from soulstone.runtimes import procfs

FAST = ("--restart-backoff", "0.05")  # restarts come quickly; the limit stays 3 in 300 s
START_TIMEOUT_S = 30  # fake_table's health.start_timeout


def chat(http: httpx2.Client, model: str, *system: str, stream: bool = False) -> httpx2.Response:
    messages = [{"role": "system", "content": s} for s in system] + [
        {"role": "user", "content": "hi"}]  # fmt: skip
    return http.post("/v1/chat/completions", json={"model": model, "messages": messages,
                                                   "stream": stream})  # fmt: skip


def test_an_engine_that_dies_while_idle_is_restarted_at_once(
    tmp_path: Path, start_gateway: StartGateway
) -> None:
    gateway = start_gateway(fake_codex(tmp_path / "c", fake_table("a", model="m")), *FAST)
    http = gateway.http()
    assert chat(http, "m").status_code == 200
    first = engine_pid(gateway, "a")
    os.kill(first, signal.SIGKILL)
    # No request is needed: the gateway hears of the death (its pidfd) and restarts the engine.
    wait_until(lambda: restarts(gateway, "a") == 1, "the restart was counted")
    wait_until(lambda: status_of(gateway, "a")["state"] == "running", "a runs again")
    assert engine_pid(gateway, "a") != first
    assert chat(http, "m").status_code == 200
    logged = [e for e in gateway.logged() if e.get("event") == "engine died"]
    assert logged and logged[0]["soulstone"] == "a" and "process ended" in logged[0]["detail"]


def test_an_engine_that_never_starts_is_marked_failed_and_up_clears_it(
    tmp_path: Path, start_gateway: StartGateway
) -> None:
    flag = tmp_path / "broken"
    flag.touch()
    table = fake_table("a", "--refuse-start-if", str(flag), model="m")
    gateway = start_gateway(fake_codex(tmp_path / "c", table), *FAST)
    http = gateway.http()
    first = chat(http, "m")  # it waits through three failed starts, then the mark
    assert first.status_code == 503, first.text
    assert first.json()["error"]["code"] == "ENGINE_FAILED"
    assert "refusing to start" not in first.text  # the engine's log stays out of answers
    began = time.monotonic()
    refused = chat(http, "m")
    took = time.monotonic() - began
    assert refused.status_code == 503
    error = refused.json()["error"]
    assert error["code"] == "ENGINE_FAILED" and error["soulstone"] == "a"
    assert "3 failures within 300 s" in error["message"] and "exit 1" in error["message"]
    assert 0 < int(refused.headers["Retry-After"]) <= 300
    assert took < START_TIMEOUT_S / 10, f"the refusal took {took:.2f} s: it waited for a start"
    flat = http.post("/v1/chat/completions", json={"model": "m"},
                     headers={"X-Soulstone-Errors": "flat"})  # fmt: skip
    assert flat.json()["error"] == "ENGINE_FAILED" and flat.json()["retry_after"] > 0
    shown = json.loads(gateway.cli("status", "--json").stdout)["soulstones"][0]
    assert shown["state"] == "failed" and "3 failures within 300 s" in shown["reason"]
    assert "marked failed" in gateway.cli("status").stdout.replace("\n", " ")
    flag.unlink()
    assert gateway.cli("up", "a").returncode == 0  # clears the mark and starts it
    assert chat(http, "m").status_code == 200
    assert "reason" not in status_of(gateway, "a")
    assert restarts(gateway, "a") == 2  # the two restarts after the first failed start


def test_an_engine_out_of_memory_gives_503_engine_out_of_memory(
    tmp_path: Path, start_gateway: StartGateway
) -> None:
    codex = fake_codex(tmp_path / "c", fake_table("a", model="m"),
                       fake_table("big", "--oom-at-start", model="big"))  # fmt: skip
    gateway = start_gateway(codex, *FAST)
    http = gateway.http()
    for stream in (False, True):
        answer = chat(http, "m", "[[oom]]", stream=stream)
        assert answer.status_code == 503, answer.text
        assert answer.json()["error"]["code"] == "ENGINE_OUT_OF_MEMORY"
        assert int(answer.headers["Retry-After"]) > 0
    assert chat(http, "m").status_code == 200  # the engine itself still runs
    started = chat(http, "big")  # CUDA out of memory in its log as it starts
    assert started.status_code == 503, started.text
    assert started.json()["error"]["code"] == "ENGINE_OUT_OF_MEMORY"
    assert "ran out of memory while starting" in started.json()["error"]["message"]


def test_a_fallback_takes_the_requests_of_a_failed_soulstone_until_it_is_back(
    tmp_path: Path, start_gateway: StartGateway
) -> None:
    flag = tmp_path / "broken"
    primary = fake_table("a", "--refuse-start-if", str(flag), model="m-a", group="g",
                         extra='fallback = "m-b"')  # fmt: skip
    spare = fake_table("b", model="m-b", group="g")
    gateway = start_gateway(fake_codex(tmp_path / "c", primary, spare), *FAST)
    http = gateway.http()
    own = chat(http, "m-a")
    assert own.status_code == 200 and "X-Soulstone-Served-By" not in own.headers
    flag.touch()
    os.kill(engine_pid(gateway, "a"), signal.SIGKILL)  # killed, and refusing to start again
    answered = chat(http, "m-a")
    assert answered.status_code == 200, answered.text
    assert answered.headers["X-Soulstone-Served-By"] == "b"
    assert [c["model"] for c in fake_engine_calls(spare)] == ["m-b"]  # b was asked for its model
    with http.stream("POST", "/v1/chat/completions", json={
            "model": "m-a", "messages": [], "stream": True}) as streamed:  # fmt: skip
        assert streamed.status_code == 200
        assert streamed.headers["X-Soulstone-Served-By"] == "b"
        assert [line for line in streamed.iter_lines() if line][-1] == "data: [DONE]"
    assert status_of(gateway, "a")["state"] == "failed"
    flag.unlink()
    assert gateway.cli("up", "a").returncode == 0
    back = chat(http, "m-a")
    assert back.status_code == 200 and "X-Soulstone-Served-By" not in back.headers
    assert len(fake_engine_calls(primary)) == 1  # traffic returned to a
    assert len(fake_engine_calls(spare)) == 2


def test_a_reload_whose_engine_cannot_start_keeps_the_running_codex(
    tmp_path: Path, start_gateway: StartGateway
) -> None:
    table = fake_table("a", model="m")
    codex = fake_codex(tmp_path / "c", table)
    gateway = start_gateway(codex, *FAST)
    http = gateway.http()
    assert chat(http, "m").status_code == 200
    old_pid = engine_pid(gateway, "a")
    broken = table.replace('"--model", "m"', '"--model", "m", "--exit-at-once", "4"')
    assert broken != table
    (codex / "fake.toml").write_text(broken)
    answer = gateway.http().post("/admin/reload")
    assert answer.status_code == 422, answer.text
    assert answer.json()["reloaded"] is False
    assert "exit 4" in answer.json()["errors"][0]["message"]
    assert not procfs.alive(old_pid)  # stopped for the reload, then started again
    assert chat(http, "m").status_code == 200  # the running codex answers
    shown = json.loads(gateway.cli("status", "--json").stdout)
    assert shown["reload"]["reloaded"] is False
    assert shown["reload"]["why"] == "an engine of the new codex did not start"
    printed = gateway.cli("status").stdout.replace("\n", " ")
    assert "the last reload failed" in printed and "exit 4" in printed
    (codex / "fake.toml").write_text(table + "[[[broken")
    assert gateway.http().post("/admin/reload").status_code == 422  # and an invalid codex
    assert chat(http, "m").status_code == 200
    assert admin_status(gateway)["reload"]["why"] == "the new codex is invalid"
    (codex / "fake.toml").write_text(table)
    assert gateway.http().post("/admin/reload").json()["reloaded"] is True
    assert json.loads(gateway.cli("status", "--json").stdout)["reload"]["reloaded"] is True


def test_a_request_racing_a_death_waits_for_the_restart(
    tmp_path: Path, start_gateway: StartGateway
) -> None:
    gateway = start_gateway(fake_codex(tmp_path / "c", fake_table("a", model="m")), *FAST)
    http = gateway.http()
    assert chat(http, "m").status_code == 200
    pid = engine_pid(gateway, "a")
    os.kill(pid, signal.SIGKILL)
    wait_gone(pid)
    assert chat(http, "m").status_code == 200  # refused at connect, or held: never a 502
    wait_until(lambda: restarts(gateway, "a") == 1, "one restart")


def test_a_fallback_takes_requests_while_the_queue_for_its_soulstone_is_full(
    tmp_path: Path, start_gateway: StartGateway
) -> None:
    primary = fake_table("a", "--slow-start", "3", model="m-a", group="g",
                         extra='fallback = "m-b"')  # fmt: skip
    spare = fake_table("b", model="m-b", group="g")
    gateway = start_gateway(fake_codex(tmp_path / "c", primary, spare), "--queue", "1")
    http = gateway.http()
    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(chat, gateway.http(), "m-a")  # waits while a starts, slowly
        wait_until(lambda: queue_depth(gateway) == 1, "the first request waits for a")
        second = chat(http, "m-a")  # the queue for a is full: b answers
        assert second.status_code == 200, second.text
        assert second.headers["X-Soulstone-Served-By"] == "b"
        assert first.result().status_code == 200
        assert "X-Soulstone-Served-By" not in first.result().headers
    assert len(fake_engine_calls(primary)) == 1 and len(fake_engine_calls(spare)) == 1


def queue_depth(gateway: RunningGateway) -> float:
    with gateway.tcp() as admin:
        text = admin.get("/metrics").text
    return next(float(line.split()[-1]) for line in text.splitlines()
                if line.startswith("soulstone_queue_depth "))  # fmt: skip
