"""Warm-up through the gateway: the engine's first request is soulstone's, then users'."""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from gateway_harness import StartGateway, fake_codex, fake_engine_calls, fake_table
from soulstone.runtimes.warmup import REQUEST_ID_PREFIX

PROMPT = "warm-up words no log may hold"


def metric(text: str, name: str, soulstone: str) -> float | None:
    found = re.search(rf'^{name}\{{soulstone="{soulstone}"\}} (\S+)$', text, re.MULTILINE)
    return None if found is None else float(found[1])


def test_waiting_requests_reach_the_engine_only_after_its_warm_up(
    tmp_path: Path, start_gateway: StartGateway
) -> None:
    table = fake_table("warm", "--ttft-ms", "300", model="m-warm",
                       extra=f'warmup = {{ prompt = "{PROMPT}", max_tokens = 2 }}')  # fmt: skip
    gateway = start_gateway(fake_codex(tmp_path / "c", table))
    client = gateway.uds_client()

    def ask(number: int) -> str | None:
        answer = client.chat.completions.create(
            model="m-warm", messages=[{"role": "user", "content": f"user {number}"}],
            max_tokens=4, extra_headers={"X-Request-ID": f"user-{number}"},
        )  # fmt: skip
        return answer.choices[0].message.content

    with ThreadPoolExecutor(2) as pool:  # both wait for the cold engine
        assert all(list(pool.map(ask, range(2))))
    warm, *users = fake_engine_calls(table)
    assert warm["id"] == REQUEST_ID_PREFIX + "warm" and warm["model"] == "m-warm"
    assert warm["last"] == {"role": "user", "content": PROMPT} and warm["max_tokens"] == 2
    assert sorted(u["id"] for u in users) == ["user-0", "user-1"]
    assert all(u["began"] >= warm["ended"] for u in users)  # the warm-up took 300 ms first
    text = gateway.http().get("/metrics").text
    assert metric(text, "soulstone_engine_warmup_seconds_count", "warm") == 1
    assert (metric(text, "soulstone_engine_warmup_seconds_sum", "warm") or 0) >= 0.3
    [warmed] = [e for e in gateway.logged() if e.get("event") == "warmed"]
    assert warmed["soulstone"] == "warm" and warmed["seconds"] >= 0.3
    assert PROMPT not in gateway.log.read_text()
    assert PROMPT not in gateway.state.gateway_log.read_text()


def test_a_failed_warm_up_is_a_warning_and_the_engine_serves(
    tmp_path: Path, start_gateway: StartGateway
) -> None:
    table = fake_table("cold", "--fail-first", "500", model="m-cold", extra="warmup = true")
    gateway = start_gateway(fake_codex(tmp_path / "c", table))
    answer = gateway.uds_client().chat.completions.create(
        model="m-cold", messages=[{"role": "user", "content": "hi"}], max_tokens=4
    )
    assert answer.choices[0].message.content
    [failed] = [e for e in gateway.logged() if e.get("event") == "warmup_failed"]
    assert failed["level"] == "warning" and failed["soulstone"] == "cold"
    assert "HTTP 500" in failed["detail"]
    text = gateway.http().get("/metrics").text
    assert metric(text, "soulstone_engine_warmup_failures_total", "cold") == 1
    assert metric(text, "soulstone_engine_warmup_seconds_count", "cold") is None
    assert [c["id"].startswith(REQUEST_ID_PREFIX) for c in fake_engine_calls(table)] == [
        True, False,
    ]  # fmt: skip
