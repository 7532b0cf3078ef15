"""Whether an engine's words say it ran out of memory (vLLM, llama-server, CUDA, ROCm) (pure)."""

from __future__ import annotations

import re

# What vLLM, PyTorch, llama.cpp (ggml) and the GPU runtimes print when memory runs out.
OUT_OF_MEMORY = re.compile(
    rb"out of memory|OutOfMemoryError|failed to allocate|unable to allocate|cannot allocate"
    rb"|cudaMalloc failed|hipMalloc failed|CUBLAS_STATUS_ALLOC_FAILED|insufficient memory"
    rb"|not enough memory|No available memory for the cache blocks"
    rb"|larger than the available KV cache memory",
    re.IGNORECASE,
)
SEARCHED_BYTES = 64 * 1024  # an error body is short; a log tail is bounded by its caller


def says_out_of_memory(text: str | bytes) -> bool:
    """True when the text (an error body or the end of a log) reports memory running out."""
    data = text.encode(errors="replace") if isinstance(text, str) else text
    return OUT_OF_MEMORY.search(data[:SEARCHED_BYTES]) is not None
