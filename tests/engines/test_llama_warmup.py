"""A real llama-server warmed up once healthy, its output kept in the rotating log."""

from __future__ import annotations

import json
import re
from pathlib import Path

import httpx2
import pytest

from conftest import MakeSupervisor
from helpers import free_port, load, write
from real_engines import llama_server, tiny_gguf
from soulstone.runtimes.warmup import CHAT_PATH
from soulstone.supervisor.plan import Target
from soulstone.supervisor.supervisor import Event

pytestmark = pytest.mark.engine


def predicted_tokens(port: int) -> float:
    text = httpx2.get(f"http://127.0.0.1:{port}/metrics").text
    found = re.search(r"^llamacpp:tokens_predicted_total (\S+)$", text, re.MULTILINE)
    assert found is not None, text
    return float(found[1])


async def test_llama_server_answers_the_warm_up_before_the_start_returns(
    tmp_path: Path, make_supervisor: MakeSupervisor
) -> None:
    port = free_port()
    command = [str(llama_server()), "-m", str(tiny_gguf()), "-c", "256", "-t", "1", "--no-warmup"]
    table = (f'[warm]\nport = {port}\nexec = {json.dumps(command)}\nmodels = ["warm-model"]\n'
             "warmup = { max_tokens = 3 }\n"
             "health = { start_timeout = 60, interval = 0.1 }\n")  # fmt: skip
    codex = load(write(tmp_path / "codex", {"c.toml": table}))
    events: list[Event] = []
    supervisor = make_supervisor(codex, events=events)
    await supervisor.manifest(Target("soulstone", "warm"))
    warmed = [e for e in events if e.kind in ("warmed", "warmup_failed")]
    assert [(e.kind, e.detail) for e in warmed] == [("warmed", CHAT_PATH)]
    assert predicted_tokens(port) >= 1  # the engine generated before any user asked
    log = supervisor.state.log("warm").read_text()
    assert "llama" in log.lower() and "--- soulstone: starting" in log
