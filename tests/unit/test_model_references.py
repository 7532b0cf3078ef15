"""`model` / `revision` in the codex: their checks, and how the engine gets the snapshot folder."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from helpers import PODMAN_HOST, load, one, problems, write
from soulstone.codex.engines import served_argv
from soulstone.codex.models import Soulstone

VLLM = ["python", "-m", "vllm.entrypoints.openai.api_server", "--max-model-len", "512"]
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def table(lines: str, command: list[str] | None = None) -> str:
    command = VLLM if command is None else command
    return f"[tiny]\nport = 8000\nexec = {json.dumps(command)}\n{lines}\n"


def one_stone(tmp_path: Path, text: str) -> Soulstone:
    [soulstone] = load(write(tmp_path, {"a.toml": text})).soulstones
    return soulstone


def test_model_and_revision_resolve(tmp_path: Path) -> None:
    stone = one_stone(tmp_path, table(f'model = "org/tiny-llama"\nrevision = "{COMMIT}"'))
    assert (stone.model, stone.revision, stone.model_path) == ("org/tiny-llama", COMMIT, None)


@pytest.mark.parametrize(
    ("lines", "field", "words"),
    [
        ('model = "tiny-llama"', "model", ["malformed Hugging Face repo id", "'org/name'"]),
        ('model = "org/a--b"', "model", ["no '--'"]),
        ('model = "org/name/extra"', "model", ["malformed"]),
        ('model = "-org/name"', "model", ["malformed"]),
        ('model = 5', "model", ["'org/name'", "an integer"]),
        ('revision = "v1"', "revision", ["set model too"]),
        ('model = "org/m"\nrevision = "has space"', "revision", ["malformed revision"]),
        ('model = "org/m"\nrevision = "../main"', "revision", ["malformed revision"]),
        ('model = "org/m"\nmodel_path = "/models/m"', "model_path", ["not both"]),
    ],
)  # fmt: skip
def test_malformed_references(tmp_path: Path, lines: str, field: str, words: list[str]) -> None:
    write(tmp_path, {"a.toml": table(lines)})
    problem = one(problems(tmp_path), "tiny", field)
    for word in words:
        assert word in problem.message


def test_exec_that_names_its_own_model_is_refused(tmp_path: Path) -> None:
    write(tmp_path, {"a.toml": table('model = "org/m"', [*VLLM, "--model", "/elsewhere"])})
    message = one(problems(tmp_path), "tiny", "exec").message
    assert "'/elsewhere'" in message and "{model_path}" in message


def test_engine_without_a_model_option_needs_the_placeholder(tmp_path: Path) -> None:
    write(tmp_path, {"a.toml": table('model = "org/m"', ["tabbyAPI", "--config", "c.yml"])})
    message = one(problems(tmp_path), "tiny", "exec").message
    assert "cannot hand tabbyapi its model" in message and "{model_path}" in message
    one_stone(tmp_path, table('model = "org/m"', ["tabbyAPI", "--model-dir", "{model_path}"]))


def test_placeholder_without_any_model_is_refused(tmp_path: Path) -> None:
    write(tmp_path, {"a.toml": table("", [*VLLM, "--model", "{model_path}"])})
    assert "neither model nor model_path" in one(problems(tmp_path), "tiny", "exec").message


def test_model_needs_the_process_runtime(tmp_path: Path) -> None:
    text = '[tiny]\nport = 8000\nimage = "vllm/vllm-openai"\nmodel = "org/m"\n'
    write(tmp_path, {"a.toml": text})
    message = one(problems(tmp_path, PODMAN_HOST), "tiny", "model").message
    assert "process runtime only" in message and "quadlet" in message


def test_vllm_gets_the_snapshot_and_the_served_names(tmp_path: Path) -> None:
    text = table('model = "org/m"\nmodels = ["tiny", "tiny-alias"]')
    stone = one_stone(tmp_path, text)
    assert served_argv(stone)[-2:] == ("--host", "127.0.0.1")  # unresolved: nothing derived
    ready = dataclasses.replace(stone, model_path="/cache/snapshots/abc")
    argv = served_argv(ready)
    assert argv[: len(VLLM)] == tuple(VLLM)
    assert argv[len(VLLM) :] == ("--port", "8000", "--host", "127.0.0.1", "--model",
                                 "/cache/snapshots/abc", "--served-model-name", "tiny",
                                 "tiny-alias")  # fmt: skip


def test_sglang_gets_model_path_and_one_served_name(tmp_path: Path) -> None:
    command = ["python3", "-m", "sglang.launch_server", "--served-model-name", "mine"]
    stone = one_stone(tmp_path, table('model = "org/m"', command))
    argv = served_argv(dataclasses.replace(stone, model_path="/snap"))
    assert argv[-2:] == ("--model-path", "/snap")
    assert argv.count("--served-model-name") == 1  # exec's own is kept


def test_placeholder_is_replaced_inside_words(tmp_path: Path) -> None:
    command = ["llama-server", "-m", "{model_path}/model-q4.gguf", "--port", "8000"]
    stone = one_stone(tmp_path, table('model = "org/m"', command))
    argv = served_argv(dataclasses.replace(stone, model_path="/snap"))
    assert argv[:3] == ("llama-server", "-m", "/snap/model-q4.gguf")
    assert "--model" not in argv and "--served-model-name" not in argv


def test_placeholder_takes_a_declared_model_path(tmp_path: Path) -> None:
    command = [*VLLM, "--model", "{model_path}"]
    stone = one_stone(tmp_path, table('model_path = "/models/m"', command))
    argv = served_argv(stone)
    assert argv[len(VLLM) : len(VLLM) + 2] == ("--model", "/models/m")
    assert "--served-model-name" not in argv  # derived only for a Hugging Face `model`
