"""Hardware advice comes as warnings, never errors, from host and model facts."""

from __future__ import annotations

import json
from pathlib import Path

from helpers import write
from soulstone.codex.facts import HostFacts, ModelFiles
from soulstone.codex.load import load_codex, read_model_files
from soulstone.codex.models import Codex

NVIDIA_24G = HostFacts(gpu_vendor="nvidia", gpu_memory_bytes=24 * 2**30)


def _load(folder: Path, host: HostFacts, models: dict[str, ModelFiles] | None = None) -> Codex:
    table = models or {}
    return load_codex([folder], host, read_models=table.get)


def _warned(codex: Codex, table: str, field: str, words: str) -> bool:
    return any(w.table == table and w.field == field and words in w.message for w in codex.warnings)


def test_vllm_without_gpu_memory_utilization(tmp_path: Path) -> None:
    write(
        tmp_path,
        {
            "a.toml": '[a]\nport = 1\nexec = ["vllm", "serve", "/m"]\n'
            '[b]\nport = 2\nexec = ["vllm", "serve", "/m", "--gpu-memory-utilization", "0.4"]\n'
        },
    )
    codex = _load(tmp_path, NVIDIA_24G)
    assert _warned(codex, "a", "exec", "--gpu-memory-utilization")
    assert not [w for w in codex.warnings if w.table == "b"]


def test_lora_on_bitsandbytes_vllm(tmp_path: Path) -> None:
    write(
        tmp_path,
        {
            "a.toml": '[a]\nport = 1\nexec = ["vllm", "serve", "/m", "--quantization", '
            '"bitsandbytes", "--gpu-memory-utilization=0.5"]\nlora = { max_loras = 2 }\n'
        },
    )
    assert _warned(_load(tmp_path, NVIDIA_24G), "a", "lora", "AWQ or GPTQ")


def test_sglang_without_nvidia(tmp_path: Path) -> None:
    write(tmp_path, {"a.toml": '[a]\nport = 1\nexec = ["python3", "-m", "sglang.launch_server"]\n'})
    assert _warned(_load(tmp_path, HostFacts(gpu_vendor="amd")), "a", "engine", "NVIDIA")
    assert not _load(tmp_path, NVIDIA_24G).warnings


def test_weights_larger_than_gpu_memory(tmp_path: Path) -> None:
    write(
        tmp_path,
        {
            "a.toml": '[a]\nport = 1\nmodel_path = "/big"\n'
            'exec = ["vllm", "serve", "/big", "--gpu-memory-utilization", "0.9"]\n'
            '[b]\nport = 2\nmodel_path = "/big"\nexec = ["llama-server", "-m", "/big"]\n'
        },
    )
    codex = _load(tmp_path, NVIDIA_24G, {"/big": ModelFiles(weight_bytes=40 * 2**30)})
    assert _warned(codex, "a", "model_path", "40.0 GiB")
    # llama.cpp can offload layers to the CPU: no warning for it.
    assert not [w for w in codex.warnings if w.table == "b"]


def test_quantization_flag_that_does_not_match_the_model(tmp_path: Path) -> None:
    write(
        tmp_path,
        {
            "a.toml": '[a]\nport = 1\nexec = ["vllm", "serve", "/models/Llama-AWQ", '
            '"--quantization", "gptq", "--gpu-memory-utilization", "0.5"]\n'
            '[b]\nport = 2\nmodel_path = "/q"\nexec = ["vllm", "serve", "/q", '
            '"--quantization", "awq_marlin", "--gpu-memory-utilization", "0.5"]\n'
        },
    )
    codex = _load(tmp_path, NVIDIA_24G, {"/q": ModelFiles(1, quant_method="awq")})
    assert _warned(codex, "a", "exec", "awq")
    assert not [w for w in codex.warnings if w.table == "b"]


def test_exec_port_that_differs_from_port(tmp_path: Path) -> None:
    write(tmp_path, {"a.toml": '[a]\nport = 8000\nexec = ["llama-server", "--port", "8001"]\n'})
    assert _warned(_load(tmp_path, NVIDIA_24G), "a", "exec", "--port 8001")


def test_read_model_files_sizes_and_quantization(tmp_path: Path) -> None:
    (tmp_path / "model.safetensors").write_bytes(b"0" * 1000)
    (tmp_path / "notes.txt").write_bytes(b"0" * 99)
    config = {"quantization_config": {"quant_method": "gptq"}}
    (tmp_path / "config.json").write_text(json.dumps(config))
    assert read_model_files(str(tmp_path)) == ModelFiles(1000, "gptq")
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"0" * 10)
    assert read_model_files(str(gguf)) == ModelFiles(10, "gguf")
    assert read_model_files("org/repo") is None
    assert read_model_files(str(tmp_path / "missing")) is None
