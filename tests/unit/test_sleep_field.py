"""`sleep = true`: vLLM's sleep mode, its derived flag and variable, refused for other engines."""

from __future__ import annotations

import json
from pathlib import Path

from helpers import load, one, problems, write
from soulstone.codex.engines import served_argv
from soulstone.runtimes.base import EngineStatus
from soulstone.runtimes.process import engine_environment

VLLM = ["python", "-m", "vllm.entrypoints.openai.api_server", "--model", "/m"]
LLAMA = ["llama-server", "-m", "/m.gguf"]


def codex_text(lines: str, command: list[str] = VLLM) -> str:
    return f"[tiny]\nport = 8000\nexec = {json.dumps(command)}\n{lines}\n"


def test_sleep_derives_the_flag_and_the_variable_that_serves_sleep_and_wake(
    tmp_path: Path,
) -> None:
    [stone] = load(write(tmp_path, {"a.toml": codex_text("sleep = true")})).soulstones
    assert stone.sleep
    assert served_argv(stone).count("--enable-sleep-mode") == 1
    assert engine_environment(stone, {})["VLLM_SERVER_DEV_MODE"] == "1"


def test_a_flag_already_in_exec_is_not_doubled(tmp_path: Path) -> None:
    text = codex_text("sleep = true", [*VLLM, "--enable-sleep-mode"])
    [stone] = load(write(tmp_path, {"a.toml": text})).soulstones
    assert served_argv(stone).count("--enable-sleep-mode") == 1


def test_without_sleep_nothing_is_derived(tmp_path: Path) -> None:
    [stone] = load(write(tmp_path, {"a.toml": codex_text("")})).soulstones
    assert not stone.sleep
    assert "--enable-sleep-mode" not in served_argv(stone)
    assert "VLLM_SERVER_DEV_MODE" not in engine_environment(stone, {})


def test_sleep_on_another_engine_names_file_table_and_field(tmp_path: Path) -> None:
    found = problems(write(tmp_path, {"a.toml": codex_text("sleep = true", LLAMA)}))
    problem = one(found, "tiny", "sleep")
    assert problem.file.endswith("a.toml")
    assert "llamacpp" in problem.message and "vLLM" in problem.message


def test_sleep_must_be_a_boolean(tmp_path: Path) -> None:
    found = problems(write(tmp_path, {"a.toml": codex_text('sleep = "yes"')}))
    assert "true or false" in one(found, "tiny", "sleep").message


def test_a_sleeping_engine_is_alive_but_not_active() -> None:
    found = EngineStatus("tiny", "sleeping", pid=7)
    assert found.alive and not found.active
