"""Restart decisions (pure): backoff, the failure limit and window, the mark; OOM words."""

from __future__ import annotations

import pytest

from soulstone.dispatch.refusals import error_document, refusal_headers
from soulstone.runtimes.oom import says_out_of_memory
from soulstone.supervisor.restarts import (
    EngineFailed,
    Failures,
    GiveUp,
    Mark,
    OutOfMemory,
    RestartPolicy,
    Retry,
)

POLICY = RestartPolicy(backoff=0.5, backoff_max=4.0, jitter=0.2, limit=3, window=300.0)


def test_the_backoff_doubles_to_its_cap_and_jitter_only_shortens_it() -> None:
    assert [POLICY.delay(step, 0.0) for step in range(1, 7)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    assert POLICY.delay(1, 0.999) == pytest.approx(0.5 * (1 - 0.2 * 0.999))
    assert POLICY.delay(10_000, 0.0) == 4.0  # no overflow however long it failed


def test_the_limit_th_failure_within_the_window_marks_the_soulstone() -> None:
    failures = Failures()
    assert failures.record(POLICY, 0.0, "died", 0.0) == Retry(0.5)
    assert failures.record(POLICY, 10.0, "died", 0.0) == Retry(1.0)
    verdict = failures.record(POLICY, 20.0, "exited (exit 1)", 0.0)
    assert verdict == GiveUp(Mark("3 failures within 300 s; last: exited (exit 1)", 320.0))
    assert failures.marked(319.9) is not None
    assert failures.marked(320.0) is None  # the window passed: the mark ends by itself
    assert failures.record(POLICY, 330.0, "died", 0.0) == Retry(0.5)  # counting starts over


def test_failures_older_than_the_window_are_forgotten() -> None:
    failures = Failures()
    failures.record(POLICY, 0.0, "died", 0.0)
    failures.record(POLICY, 100.0, "died", 0.0)
    failures.answered()  # it served in between: the next backoff is the shortest again
    assert failures.record(POLICY, 301.0, "died", 0.0) == Retry(0.5)  # the first one left
    assert isinstance(failures.record(POLICY, 302.0, "died", 0.0), GiveUp)


def test_an_engine_failed_refusal_carries_retry_after_and_the_soulstone() -> None:
    refusal = EngineFailed("flash", Mark("3 failures within 300 s; last: died", 250.5), 100.0)
    assert (refusal.status, refusal.code, refusal.retry_after) == (503, "ENGINE_FAILED", 151)
    assert refusal_headers(refusal)["Retry-After"] == "151"
    document = error_document(refusal)["error"]
    assert document["soulstone"] == "flash" and document["type"] == "server_error"
    assert "soulstone up flash" in document["message"]
    oom = OutOfMemory("flash", "while starting")
    assert (oom.status, oom.code) == (503, "ENGINE_OUT_OF_MEMORY") and oom.retry_after


@pytest.mark.parametrize("words", [
    "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB",
    "ValueError: No available memory for the cache blocks. Try increasing "
    "`gpu_memory_utilization` when initializing the engine.",
    "To serve at least one request with the models's max seq len (8192), (1.0 GiB KV cache is "
    "needed, which is larger than the available KV cache memory (0.5 GiB).",
    "ggml_backend_cuda_buffer_type_alloc_buffer: allocating 9000.00 MiB on device 0: "
    "cudaMalloc failed: out of memory",
    "llama_model_load: error loading model: unable to allocate CUDA0 buffer",
    "ggml_gallocr_reserve_n: failed to allocate CUDA0 buffer of size 123",
    "RuntimeError: HIP out of memory. Tried to allocate 20.00 MiB",
])  # fmt: skip
def test_engines_words_for_memory_running_out_are_recognised(words: str) -> None:
    assert says_out_of_memory(words)
    assert says_out_of_memory(b'{"object":"error","message":"' + words.encode() + b'"}')


@pytest.mark.parametrize("words", [
    '{"error": {"message": "told to fail"}}',
    "the model 'x' does not exist",
    "INFO: loaded 291 tensors, memory used 1.2 GiB",
])  # fmt: skip
def test_other_errors_are_not_taken_for_memory_running_out(words: str) -> None:
    assert not says_out_of_memory(words)
