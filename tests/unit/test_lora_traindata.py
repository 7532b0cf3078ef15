"""Training data checks (OpenAI fine-tuning chat format) and the trainer's command (pure parts)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from helpers import load, write
from soulstone.lora.train import TrainOptions, engine_python, model_context, trainer_command
from soulstone.lora.traindata import (
    TrainDataRefused,
    capture_source,
    check_lines,
    parse_since,
)
from soulstone.lora.trainer import backend

GOOD = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}


def lines(*items: object) -> list[bytes]:
    return [item if isinstance(item, bytes) else json.dumps(item).encode() for item in items]


def test_good_lines_become_examples_numbered_by_their_line() -> None:
    parts = {"messages": [{"role": "system", "content": "be brief"},
                          {"role": "user", "content": [{"type": "text", "text": "a"},
                                                       {"type": "text", "text": "b"}]},
                          {"role": "assistant", "content": "c"}]}  # fmt: skip
    found = check_lines(lines(GOOD, b"", b"  ", parts), "d.jsonl")
    assert [e.line for e in found] == [1, 4]
    assert found[1].messages[1] == {"role": "user", "content": "ab"}
    assert json.loads(found[1].as_json())["line"] == 4


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        (b"{not json", "not JSON"),
        (b"\xff\xfe", "not JSON"),
        (b"[1, 2]", "not a JSON object"),
        (b'{"prompt": "x"}', 'no "messages" list'),
        (json.dumps({"messages": [{"role": "user", "content": "hi"}]}).encode(),
         "no assistant turn"),
        (json.dumps({"messages": [{"role": "wizard", "content": "hi"}]}).encode(),
         "message 1 has role 'wizard'"),
        (json.dumps({"messages": [{"role": "assistant", "content": None,
                                   "tool_calls": [{"id": "1"}]}]}).encode(),
         "message 1 is a tool call"),
        (json.dumps({"messages": [{"role": "user", "content": [{"type": "image_url"}]},
                                  {"role": "assistant", "content": "x"}]}).encode(),
         "message 1 has no text content"),
    ],
)  # fmt: skip
def test_each_kind_of_bad_line_is_named(bad: bytes, reason: str) -> None:
    with pytest.raises(TrainDataRefused) as caught:
        check_lines([lines(GOOD)[0], bad], "d.jsonl")
    assert f"d.jsonl:2: {reason}" in str(caught.value)


def test_every_bad_line_is_listed_and_empty_data_is_refused() -> None:
    with pytest.raises(TrainDataRefused) as caught:
        check_lines([b"x"] * 25, "d.jsonl")
    text = str(caught.value)
    assert "25 unusable lines" in text and "d.jsonl:20:" in text and "… and 5 more" in text
    with pytest.raises(TrainDataRefused, match="no examples"):
        check_lines([b"", b"\n"], "d.jsonl")


def test_since_keeps_only_newer_captured_lines() -> None:
    old = GOOD | {"created": "2026-11-01T00:00:00Z"}
    new = GOOD | {"created": "2026-11-29T12:00:00Z"}
    since = parse_since("2026-11-15", 0)
    assert [e.line for e in check_lines(lines(old, new, GOOD), "c", since)] == [2]
    assert parse_since("2d", 1_000_000.0) == 1_000_000.0 - 2 * 86400
    assert parse_since("2026-11-29T12:00:00Z", 0) == parse_since("2026-11-29T12:00:00+00:00", 0)
    with pytest.raises(TrainDataRefused, match="neither a date"):
        parse_since("last tuesday", 0)


def test_capture_sources_name_the_clients_file(tmp_path: Path) -> None:
    assert capture_source("capture:ana", tmp_path, 0) == (tmp_path / "ana.jsonl", None)
    path, since = capture_source("capture:ana:1h", tmp_path, 7200.0)
    assert (path, since) == (tmp_path / "ana.jsonl", 3600.0)
    with pytest.raises(TrainDataRefused, match="name a client"):
        capture_source("capture:", tmp_path, 0)
    for odd in ("../x", ".hidden", "a/b"):  # any client name stays one file in the folder
        path, _ = capture_source(f"capture:{odd}", tmp_path, 0)
        assert path.parent == tmp_path and not path.name.startswith(".")


def test_the_trainer_runs_in_the_engines_python_with_the_engines_context(tmp_path: Path) -> None:
    python = tmp_path / "venv" / "bin" / "python"
    vllm = python.with_name("vllm")
    for program in (python, vllm):
        program.parent.mkdir(parents=True, exist_ok=True)
        program.write_text("#!/bin/sh\n")
        program.chmod(0o755)
    model = write(tmp_path / "model", {"config.json": '{"max_position_embeddings": 2048}'})
    text = (f'[tiny]\nport = 8000\nexec = ["{vllm}", "serve", "{model}", "--gpu-memory-'
            f'utilization", "0.4"]\nmodel_path = "{model}"\nlora = {{}}\n')  # fmt: skip
    [stone] = load(write(tmp_path / "codex", {"a.toml": text})).soulstones
    assert engine_python(stone) == python
    assert model_context(stone, model) == 2048
    limited = dataclasses.replace(stone, argv=(str(python), "-m", "vllm", "--max-model-len", "512"))
    assert engine_python(limited) == python and model_context(limited, model) == 512
    assert engine_python(dataclasses.replace(stone, runtime="podman")) is None
    options = TrainOptions(rank=4, alpha=8.0, target_modules=("q_proj",))
    command = trainer_command(python, model, tmp_path / "d.jsonl", tmp_path / "out", options, 512)
    assert command[0] == str(python) and command[1].endswith("trainer.py")
    assert command[command.index("--rank") + 1] == "4" and "--max-length" in command


@pytest.mark.parametrize(("cuda", "installed", "asked", "chosen"), [
    (True, True, None, "unsloth"),  # a CUDA GPU and Unsloth: its kernels
    (True, True, "peft", "peft"),  # SOULSTONE_TRAIN_BACKEND=peft asks for plain PEFT
    (True, False, None, "peft"),  # not installed
    (False, True, None, "peft"),  # no GPU: Unsloth does not run on the CPU
    (False, False, None, "peft"),
])  # fmt: skip
def test_unsloth_trains_only_on_a_cuda_gpu_where_it_is_installed(
    cuda: bool, installed: bool, asked: str | None, chosen: str
) -> None:
    assert backend(cuda, installed, asked) == chosen
