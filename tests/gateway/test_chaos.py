"""Chaos: engines SIGKILLed at random moments of streams; the gateway always answers and recovers.

Each cycle streams a chat answer while a timer kills the engine at a random
moment (before, during or after the stream). The stream must end (the whole
answer, an error event then `[DONE]`, or a 502), never hang; the engine must
be back for the next request; no engine or keeper may outlive its cycle; the
gateway's memory must not grow; `soulstone_engine_restarts_total` counts
every kill.
"""

from __future__ import annotations

import json
import os
import random
import signal
import threading
import time
from collections import Counter
from pathlib import Path

import httpx2
import pytest

from gateway_harness import RunningGateway, StartGateway, fake_codex, fake_table
from helpers import free_port, write
from real_engines import llama_table
from recovery_helpers import kept, restarts, wait_gone
from soulstone.runtimes import procfs

CHAOS = ("--restart-limit", "100000", "--restart-backoff", "0.01")  # never marked failed
CLIENT_TIMEOUT_S = 30  # a stream that hangs fails the test instead of the test hanging
RSS_SLACK_KIB = 10 * 1024


def rss_kib(pid: int) -> int:
    """The process's resident memory (VmRSS) in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


class Chaos:
    """Runs kill cycles against one soulstone of a gateway and remembers what it saw."""

    def __init__(self, gateway: RunningGateway, model: str, body: dict[str, object],
                 seed: int) -> None:  # fmt: skip
        self.gateway, self.model, self.body = gateway, model, body
        self.random = random.Random(seed)
        transport = httpx2.HTTPTransport(uds=str(gateway.socket))
        self.http = httpx2.Client(transport=transport, base_url="http://localhost",
                                  timeout=CLIENT_TIMEOUT_S)  # fmt: skip
        self.outcomes: Counter[str] = Counter()
        self.ended: list[tuple[int, int, int]] = []  # (engine pid, keeper pid, keeper ticks)
        self.kills = 0
        self.kill_within = 0.0

    def measure(self) -> None:
        """Time one whole stream: kills then land anywhere from before it to just after it."""
        self._back(-1)  # the engine is up: the stream's time is its own
        began = time.monotonic()
        assert self._stream(-1) == "answered"
        self.kill_within = 1.2 * (time.monotonic() - began)

    def cycle(self, number: int) -> None:
        record = kept(self.gateway, "a")
        pid = int(record["pid"])
        self.ended.append((pid, int(record["keeper_pid"]), int(record["keeper_ticks"])))
        killer = threading.Timer(self.random.uniform(0, self.kill_within), os.kill,
                                 (pid, signal.SIGKILL))  # fmt: skip
        killer.start()
        try:
            self.outcomes[self._stream(number)] += 1
        finally:
            killer.join()
        self.kills += 1
        wait_gone(pid)  # its sockets are closed: the next request cannot reach the dead engine
        self._back(number)

    def _back(self, number: int) -> None:
        back = self.http.post("/v1/chat/completions", json={"model": self.model, "messages": [
            {"role": "user", "content": "back?"}], "max_tokens": 4})  # fmt: skip
        assert back.status_code == 200, f"cycle {number}: the engine is not back: {back.text}"

    def _stream(self, number: int) -> str:
        """How the stream ended: answered, error event, or 502."""
        with self.http.stream("POST", "/v1/chat/completions", json=self.body) as response:
            if response.status_code == 502:  # the engine died before it answered anything
                response.read()
                assert response.json()["error"]["code"] in ("ENGINE_FAILED", "ENGINE_UNREACHABLE")
                return "502"
            assert response.status_code == 200, f"cycle {number}: {response.status_code}"
            lines = [line for line in response.iter_lines() if line]
        assert lines and lines[-1] == "data: [DONE]", f"cycle {number}: {lines[-3:]}"
        last = json.loads(lines[-2].removeprefix("data: ")) if len(lines) > 1 else {}
        if "error" in last:
            assert last["error"]["code"] == "ENGINE_FAILED", f"cycle {number}: {last}"
            return "error event"
        return "answered"

    def assert_nothing_left(self) -> None:
        """Every engine and keeper of a finished cycle is gone, with its whole process group."""
        for pid, keeper, ticks in self.ended:
            assert procfs.wait_gone(keeper, ticks, 15), f"keeper {keeper} outlived its engine"
            assert not procfs.alive(pid), f"engine {pid} still runs"
            assert procfs.group_members(pid) == [], f"engine {pid} left processes behind"


def test_chaos_against_the_fake_engine(tmp_path: Path, start_gateway: StartGateway) -> None:
    table = fake_table("a", "--tokens", "30", "--token-delay-ms", "4", model="m")
    gateway = start_gateway(fake_codex(tmp_path / "c", table), *CHAOS)
    body = {"model": "m", "messages": [{"role": "user", "content": "go"}], "stream": True}
    chaos = Chaos(gateway, "m", body, seed=17)
    chaos.measure()
    for number in range(10):  # warm up: pools, caches and the allocator settle
        chaos.cycle(number)
    before = rss_kib(gateway.process.pid)
    for number in range(10, 110):
        chaos.cycle(number)
    grown = rss_kib(gateway.process.pid) - before
    assert grown < RSS_SLACK_KIB, f"the gateway's RSS grew by {grown} KiB over 100 kills"
    assert restarts(gateway, "a") == chaos.kills == 110
    print(
        f"fake engine chaos: {dict(chaos.outcomes)}, RSS grew {grown} KiB, kills within "
        f"{chaos.kill_within:.3f} s"
    )
    assert chaos.outcomes["error event"] > 0, chaos.outcomes  # kills did land mid-stream
    assert set(chaos.outcomes) <= {"answered", "error event", "502"}
    chaos.assert_nothing_left()


@pytest.mark.engine
def test_chaos_against_llama_server(tmp_path: Path, start_gateway: StartGateway) -> None:
    codex = write(tmp_path / "codex", {"llama.toml": llama_table(
        "a", "tiny", "g", f"port = {free_port()}")})  # fmt: skip
    gateway = start_gateway(codex, *CHAOS)
    body = {"model": "tiny", "messages": [{"role": "user", "content": "Tell me a story"}],
            "stream": True, "max_tokens": 300, "ignore_eos": True}  # fmt: skip
    chaos = Chaos(gateway, "tiny", body, seed=5)
    chaos.measure()
    for number in range(10):
        chaos.cycle(number)
    print(f"llama-server chaos: {dict(chaos.outcomes)}, kills within {chaos.kill_within:.3f} s")
    assert restarts(gateway, "a") == chaos.kills == 10
    assert set(chaos.outcomes) <= {"answered", "error event", "502"}
    chaos.assert_nothing_left()
