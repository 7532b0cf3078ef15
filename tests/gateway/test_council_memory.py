"""Resonance memory through a real gateway process and fake engines (SPEC C8).

The fake engine's embeddings are made up (they do not follow the text's
meaning: tests/gateway/test_council_memory_real.py uses a real model); they
are enough to check what is stored, for whom, and when it is given back.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx2
import pytest

from gateway_harness import (
    RunningGateway,
    StartGateway,
    fake_codex,
    fake_engine_calls,
    fake_table,
    keyed,
    write_councils,
)

COUNCILS = """
[persona.maat]
model = "m-a"
system = "You are Ma'at. [[say=truth is balance]]"
[persona.roc]
model = "m-a"
system = "You are Roc. [[say=truth is height]]"
[persona.thoth]
model = "m-a"
system = "You are Thoth. [[echo]]"

[council.remembering]
personas = ["maat", "roc"]
aggregator = "thoth"
memory = { embed_model = "e-emb", top_k = 4 }

[council.forgetful]
personas = ["maat", "roc"]
aggregator = "thoth"
"""
REMEMBERS = "The council remembers from this session:"


def memory_folder(gateway: RunningGateway) -> Path:
    return Path(gateway.env["XDG_DATA_HOME"]) / "soulstone" / "memory"


@pytest.fixture
def tables() -> list[str]:
    return [fake_table("a", model="m-a", group="g"), fake_table("e", model="e-emb", group="g")]


def start(tmp_path: Path, start_gateway: StartGateway, tables: list[str],
          **options: Any) -> RunningGateway:  # fmt: skip
    codex = fake_codex(tmp_path / "codex", *tables)
    councils = write_councils(tmp_path / "councils", COUNCILS)
    return start_gateway(codex, "--councils", str(councils), **options)


def ask(gateway: RunningGateway, council: str, request_id: str, session: str | None,
        question: str = "What is truth?") -> dict[str, Any]:  # fmt: skip
    headers = {"X-Request-ID": request_id}
    if session is not None:
        headers["X-Conveyance-Session-ID"] = session
    body = {"messages": [{"role": "user", "content": question}]}
    with gateway.http() as http:
        answer = http.post(f"/v1/council/{council}", headers=headers, json=body)
    assert answer.status_code == 200, answer.text
    return dict(answer.json())


def system_prompt(table: str, request_id: str) -> str:
    calls = fake_engine_calls(table)
    found = [c for c in calls if c["id"] == request_id]
    assert len(found) == 1, (request_id, [c["id"] for c in calls])
    return str(found[0]["system"])


def test_nothing_is_written_without_memory_or_without_a_session(
    tmp_path: Path, start_gateway: StartGateway, tables: list[str]
) -> None:
    gateway = start(tmp_path, start_gateway, tables)
    assert ask(gateway, "forgetful", "f1", "s1")["memory"] is None
    assert ask(gateway, "remembering", "r1", None)["memory"] is None
    assert ask(gateway, "forgetful", "f2", "s1")["memory"] is None
    assert REMEMBERS not in system_prompt(tables[0], "f2.maat")
    assert not memory_folder(gateway).exists()
    with gateway.http() as http:  # forgetting on a gateway that never remembered creates nothing
        answer = http.post("/admin/memory/forget", json={"session": "s1"})
    assert answer.status_code == 200 and answer.json()["forgotten"] == 0
    assert not memory_folder(gateway).exists()


def test_a_session_recalls_its_answers_until_forgotten(
    tmp_path: Path, start_gateway: StartGateway, tables: list[str]
) -> None:
    gateway = start(tmp_path, start_gateway, tables)
    first = ask(gateway, "remembering", "q1", "alpha")
    assert first["memory"] == {"recalled": 0, "stored": 2, "error": None}
    assert REMEMBERS not in system_prompt(tables[0], "q1.maat")
    assert memory_folder(gateway).is_dir()

    second = ask(gateway, "remembering", "q2", "alpha", "And what is truth now?")
    assert second["memory"] == {"recalled": 2, "stored": 2, "error": None}
    for persona in ("maat", "roc"):
        prompt = system_prompt(tables[0], f"q2.{persona}")
        recalled = prompt.split(REMEMBERS)[1]
        assert "- truth is balance" in recalled and "- truth is height" in recalled
    assert REMEMBERS not in system_prompt(tables[0], "q2.thoth")  # only the members remember

    other = ask(gateway, "remembering", "q3", "beta")
    assert other["memory"] == {"recalled": 0, "stored": 2, "error": None}
    assert REMEMBERS not in system_prompt(tables[0], "q3.maat")

    # The gateway holds the store's folder: the CLI forgets through its admin API.
    forgot = gateway.cli("council", "forget", "alpha", "--json")
    assert forgot.returncode == 0, forgot.stderr
    assert json.loads(forgot.stdout) == {"session": "alpha", "forgotten": 4,
                                         "where": str(memory_folder(gateway))}  # fmt: skip
    after = ask(gateway, "remembering", "q4", "alpha")
    assert after["memory"] == {"recalled": 0, "stored": 2, "error": None}
    assert REMEMBERS not in system_prompt(tables[0], "q4.maat")
    assert ask(gateway, "remembering", "q5", "beta")["memory"]["recalled"] == 2  # beta stays

    # With no gateway running the CLI opens the folder itself.
    assert gateway.stop() == 0
    forgot = gateway.cli("council", "forget", "beta")
    assert forgot.returncode == 0, forgot.stderr
    assert "forgot 4 memories of session 'beta'" in forgot.stdout
    again = gateway.cli("council", "forget", "beta", "--json")
    assert json.loads(again.stdout)["forgotten"] == 0


def test_a_memory_failure_is_reported_and_the_council_still_answers(
    tmp_path: Path, start_gateway: StartGateway, tables: list[str]
) -> None:
    key, limited = keyed("limited", models=["m-a"])  # may ask the personas, not embed
    gateway = start(tmp_path, start_gateway, tables, clients={"clients": limited},
                    with_harness=True)  # fmt: skip
    secret = "Which zebra-cipher opens the vault?"
    with httpx2.Client(base_url=f"http://127.0.0.1:{gateway.tcp_port}", timeout=120) as http:
        answer = http.post(
            "/v1/council/remembering", json={"messages": [{"role": "user", "content": secret}]},
            headers={"Authorization": f"Bearer {key}", "X-Conveyance-Session-ID": "s1"},
        )  # fmt: skip
    assert answer.status_code == 200, answer.text
    result = answer.json()
    assert result["final"]["content"]  # the council answered
    memory = result["memory"]
    assert memory["recalled"] == memory["stored"] == 0
    assert memory["error"].startswith("MODEL_FORBIDDEN: limited may not use 'e-emb'")
    failures = [line for line in gateway.logged() if line.get("event") == "council memory failed"]
    assert failures and {line["error"] for line in failures} == {"EmbeddingFailed"}
    assert all(line["council"] == "remembering" for line in failures)
    assert "zebra-cipher" not in gateway.log.read_text()
    assert not memory_folder(gateway).exists()
