"""Resonance memory with real embeddings: all-MiniLM-L6-v2 served by vLLM (SPEC C8).

The personas are fake engines answering fixed sentences (`[[say=…]]`); the
embeddings come from a real model through the gateway's request path, so
what is recalled follows the meaning of the question. One gateway and one
vLLM engine serve the module (the engine takes about a minute to start).
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway_harness import (
    RunningGateway,
    fake_codex,
    fake_engine_calls,
    fake_table,
    gateway_starter,
    write_councils,
)
from real_engines import minilm_table

pytestmark = pytest.mark.engine

RIVER = "The river floods the valley every spring."
TAXES = "Income tax returns are due in April."
COUNCILS = f"""
[persona.hydro]
model = "m-a"
system = "You know rivers. [[say={RIVER}]]"
[persona.fisc]
model = "m-a"
system = "You know taxes. [[say={TAXES}]]"
[persona.scribe]
model = "m-a"
system = "You write the answer. [[echo]]"

[council.almanac]
personas = ["hydro", "fisc"]
aggregator = "scribe"
timeout_s = 300
memory = {{ embed_model = "minilm", top_k = 1 }}
"""
REMEMBERS = "The council remembers from this session:"


@pytest.fixture(scope="module")
def almanac(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RunningGateway, str]]:
    """A gateway with the fake personas' engine and the real embedding engine, both up."""
    folder = tmp_path_factory.mktemp("memory")
    short = Path(tempfile.mkdtemp(prefix="ss-", dir="/tmp"))  # vLLM's socket paths stay short
    personas = fake_table("a", model="m-a", group="g")
    embedder = minilm_table("minilm", "minilm", short / "e.sock", short,
                            extra_lines='groups = ["g"]\n')  # fmt: skip
    codex = fake_codex(folder / "codex", personas, embedder)
    councils = write_councils(folder / "councils", COUNCILS)
    try:
        with gateway_starter(folder) as start:
            gateway = start(codex, "--councils", str(councils))
            with gateway.http() as http:
                http.timeout = 900  # the first start of vLLM on 2 busy cores
                for name in ("a", "minilm"):
                    answer = http.post("/admin/up", json={"name": name})
                    assert answer.status_code == 200, answer.text
            yield gateway, personas
    finally:
        shutil.rmtree(short, ignore_errors=True)


def ask(gateway: RunningGateway, request_id: str, session: str, question: str) -> dict[str, Any]:
    headers = {"X-Request-ID": request_id, "X-Conveyance-Session-ID": session}
    body = {"messages": [{"role": "user", "content": question}]}
    with gateway.http() as http:
        answer = http.post("/v1/council/almanac", headers=headers, json=body)
    assert answer.status_code == 200, answer.text
    return dict(answer.json())


def recalled(table: str, request_id: str) -> str | None:
    """What a persona call was given as the session's memories (None: nothing)."""
    [call] = [c for c in fake_engine_calls(table) if c["id"] == request_id]
    system = str(call["system"])
    return system.split(REMEMBERS, 1)[1] if REMEMBERS in system else None


def test_a_question_recalls_the_memory_nearest_its_meaning(
    almanac: tuple[RunningGateway, str],
) -> None:
    gateway, table = almanac
    first = ask(gateway, "r1", "nile", "Tell me two facts.")
    assert first["memory"] == {"recalled": 0, "stored": 2, "error": None}
    assert recalled(table, "r1.hydro") is None

    river = ask(gateway, "r2", "nile", "How high does the water in the stream rise?")
    assert river["memory"]["recalled"] == 1 and river["memory"]["error"] is None
    for persona in ("hydro", "fisc"):  # top_k = 1: of rivers and taxes, the river
        given = recalled(table, f"r2.{persona}")
        assert given is not None and RIVER in given and TAXES not in given

    taxes = ask(gateway, "r3", "nile", "When must I file my income taxes?")
    given = recalled(table, "r3.hydro")
    assert given is not None and TAXES in given and RIVER not in given
    assert taxes["memory"]["recalled"] == 1

    other = ask(gateway, "r4", "thames", "How high does the water in the stream rise?")
    assert other["memory"] == {"recalled": 0, "stored": 2, "error": None}
    assert recalled(table, "r4.hydro") is None  # another session remembers nothing of nile


def test_forget_removes_a_sessions_memories_while_the_gateway_runs(
    almanac: tuple[RunningGateway, str],
) -> None:
    gateway, table = almanac
    ask(gateway, "f1", "danube", "Tell me two facts.")
    assert recalled(table, "f1.hydro") is None
    ask(gateway, "f2", "danube", "Is the river high?")
    assert recalled(table, "f2.hydro") is not None

    forgot = gateway.cli("council", "forget", "danube", "--json")
    assert forgot.returncode == 0, forgot.stderr
    assert json.loads(forgot.stdout)["forgotten"] == 4  # two rounds of two answers

    after = ask(gateway, "f3", "danube", "Is the river high?")
    assert after["memory"]["recalled"] == 0
    assert recalled(table, "f3.hydro") is None
