"""The `lora` table is the one declaration: vLLM's LoRA flags and variable are derived from it."""

from __future__ import annotations

import json
from pathlib import Path

from helpers import load, write
from soulstone.codex.engines import option, served_argv
from soulstone.codex.models import Codex, Soulstone
from soulstone.runtimes.process import engine_environment

VLLM = [
    "python",
    "-m",
    "vllm.entrypoints.openai.api_server",
    "--model",
    "/m",
    "--gpu-memory-utilization",
    "0.4",
]
LORA = "lora = { max_loras = 2, max_lora_rank = 32 }"


def codex_of(tmp_path: Path, lines: str, command: list[str] = VLLM) -> Codex:
    text = f"[tiny]\nport = 8000\nexec = {json.dumps(command)}\n{lines}\n"
    return load(write(tmp_path, {"a.toml": text}))


def the_stone(codex: Codex) -> Soulstone:
    [soulstone] = codex.soulstones
    return soulstone


def test_only_a_lora_table_gives_the_flags_and_the_variable(tmp_path: Path) -> None:
    codex = codex_of(tmp_path, f"{LORA[:-2]}, max_cpu_loras = 4 }}")
    stone = the_stone(codex)
    argv = served_argv(stone)
    assert argv.count("--enable-lora") == 1
    assert (option(argv, "--max-loras"), option(argv, "--max-lora-rank"),
            option(argv, "--max-cpu-loras")) == ("2", "32", "4")  # fmt: skip
    env = engine_environment(stone, {"PATH": "/bin"})
    assert env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "True"
    assert [w for w in codex.warnings if w.field in ("exec", "env")] == []


def test_no_table_no_flags_and_other_engines_get_none(tmp_path: Path) -> None:
    plain = the_stone(codex_of(tmp_path / "a", ""))
    assert "--enable-lora" not in served_argv(plain)
    assert "VLLM_ALLOW_RUNTIME_LORA_UPDATING" not in engine_environment(plain, {})
    llama = the_stone(codex_of(tmp_path / "b", LORA, ["llama-server", "-m", "/m.gguf"]))
    assert "--enable-lora" not in served_argv(llama)
    assert "--max-cpu-loras" not in served_argv(the_stone(codex_of(tmp_path / "c", LORA)))


def test_contradicting_exec_and_env_warn_and_the_derived_values_win(tmp_path: Path) -> None:
    command = [*VLLM, "--max-loras", "5", "--max-lora-rank=64", "--no-enable-lora"]
    env = 'env = { VLLM_ALLOW_RUNTIME_LORA_UPDATING = "0", OTHER = "x" }'
    codex = codex_of(tmp_path, f"{LORA}\n{env}", command)
    stone = the_stone(codex)
    messages = [(w.file, w.table, w.field, w.message) for w in codex.warnings
                if w.field in ("exec", "env")]  # fmt: skip
    assert sorted(m[1:3] for m in messages) == [("tiny", "env")] + [("tiny", "exec")] * 3
    assert all(m[0].endswith("a.toml") for m in messages)
    text = " | ".join(m[3] for m in messages)
    assert "--max-loras 5" in text and "--max-loras 2" in text and "--max-lora-rank 64" in text
    assert "--no-enable-lora" in text and "VLLM_ALLOW_RUNTIME_LORA_UPDATING=0" in text
    argv = served_argv(stone)
    assert (option(argv, "--max-loras"), option(argv, "--max-lora-rank")) == ("2", "32")
    assert "5" not in argv and "--no-enable-lora" not in argv and "--max-lora-rank=64" not in argv
    env_seen = engine_environment(stone, {})
    assert env_seen["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "True" and env_seen["OTHER"] == "x"


def test_agreeing_exec_does_not_warn(tmp_path: Path) -> None:
    command = [*VLLM, "--enable-lora", "--max-loras", "2", "--max-lora-rank", "32"]
    env = 'env = { VLLM_ALLOW_RUNTIME_LORA_UPDATING = "true" }'
    codex = codex_of(tmp_path, f"{LORA}\n{env}", command)
    assert [w for w in codex.warnings if w.field in ("exec", "env")] == []
    argv = served_argv(the_stone(codex))
    assert argv.count("--enable-lora") == 1 and argv.count("--max-loras") == 1


def test_a_rank_vllm_refuses_is_a_warning(tmp_path: Path) -> None:
    codex = codex_of(tmp_path, "lora = { max_lora_rank = 4 }")
    [warning] = [w for w in codex.warnings if w.field == "lora.max_lora_rank"]
    assert "1, 8, 16" in warning.message and "4" in warning.message
