"""Embeddings for resonance memory, and one run's memory, over a fake request path."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import orjson
import pytest

from soulstone.council.embed import EmbeddingFailed, embeddings_call, parse_embeddings
from soulstone.council.memory import Remembered, ResonanceMemory
from soulstone.council.models import Council, Memory
from soulstone.council.resonance import SessionMemory, session_memory
from soulstone.dispatch.call import Answer, Call, Rejection
from soulstone.dispatch.path import RequestPath
from soulstone.errors import Refusal
from soulstone.guard.clients import OWNER


def answer(*vectors: list[float], shuffled: bool = False) -> bytes:
    data = [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(vectors)]
    return orjson.dumps({"object": "list", "data": data[::-1] if shuffled else data})


def test_vectors_come_back_in_input_order() -> None:
    body = answer([1.0, 0.0], [0, 1], shuffled=True)
    assert parse_embeddings(body, 2) == [[1.0, 0.0], [0.0, 1.0]]


@pytest.mark.parametrize(("body", "why"), [
    (b"not json", "not JSON"),
    (orjson.dumps({"data": []}), "0 vectors for 1 inputs"),
    (orjson.dumps({"error": {"message": "x"}}), "no vectors for 1 inputs"),
    (orjson.dumps({"data": [{"index": 3, "embedding": [1.0]}]}), r"data\[0\] has no valid"),
    (orjson.dumps({"data": [{"index": 0, "embedding": "AAAA"}]}), "not a list of numbers"),
    (orjson.dumps({"data": [{"index": 0, "embedding": []}]}), "not a list of numbers"),
    (orjson.dumps({"data": [{"index": 0, "embedding": [True]}]}), "not a list of numbers"),
])  # fmt: skip
def test_an_answer_that_is_not_embeddings_is_refused(body: bytes, why: str) -> None:
    with pytest.raises(EmbeddingFailed, match=why):
        parse_embeddings(body, 1)


def test_mixed_dimensions_are_refused() -> None:
    with pytest.raises(EmbeddingFailed, match="mixes"):
        parse_embeddings(answer([1.0, 0.0], [1.0]), 2)


def caller(session: str | None = "s1") -> Call:
    document = {"messages": [{"role": "user", "content": "q"}]}
    return Call("council", document, OWNER, "req-1", session, council="pantheon")


def test_the_embeddings_call_is_the_callers_and_carries_no_session() -> None:
    call = embeddings_call(caller(), "pantheon", "minilm", ["a", "b"], "req-1.memory",
                           {"truncate_prompt_tokens": -1})  # fmt: skip
    assert call.endpoint == "embeddings" and call.client is OWNER
    assert call.document == {"model": "minilm", "input": ["a", "b"], "truncate_prompt_tokens": -1}
    assert (call.request_id, call.session_id, call.council) == ("req-1.memory", None, "pantheon")


WORDS = ("river", "tax", "truth")


def toy_vector(text: str) -> list[float]:
    """A made-up embedding: which of a few words the text holds (plus a constant)."""
    return [1.0 if word in text else 0.0 for word in WORDS] + [0.1]


class FakePath:
    """The request path as SessionMemory uses it: dispatch, routes and a log."""

    def __init__(self, refuse: bool = False) -> None:
        self.services = SimpleNamespace(routes={})
        self.calls: list[Call] = []
        self.logged: list[tuple[str, dict[str, Any]]] = []
        self.refuse = refuse
        self.log = SimpleNamespace(warning=lambda event, **kw: self.logged.append((event, kw)))

    async def dispatch(self, call: Call) -> Answer | Rejection:
        self.calls.append(call)
        if self.refuse:
            return Rejection(Refusal(403, "MODEL_NOT_ALLOWED", "no embeddings for you"))
        return Answer(200, answer(*(toy_vector(t) for t in call.document["input"])))


COUNCIL = Council(name="pantheon", personas=("maat",), aggregator="maat",
                  memory=Memory(embed_model="minilm", top_k=1))  # fmt: skip


def run_memory(memory: ResonanceMemory, path: FakePath, session: str = "s1") -> SessionMemory:
    found = session_memory(memory, cast(RequestPath, path), COUNCIL, caller(session))
    assert found is not None
    return found


async def test_a_later_question_recalls_the_nearest_answer_of_its_session(tmp_path: Path) -> None:
    memory = ResonanceMemory(tmp_path / "memory")
    path = FakePath()
    try:
        first = run_memory(memory, path)
        first.begin("what flows?")
        assert await first.recall() == ()
        first.remember(1, [("maat", "the river flows"), ("roc", "tax is due"), ("thoth", " ")])
        assert await first.finish() == {"recalled": 0, "stored": 2, "error": None}
        second = run_memory(memory, path)
        second.begin("how deep is the river?")
        assert await second.recall() == ("the river flows",)
        assert await second.finish() == {"recalled": 1, "stored": 0, "error": None}
        other = run_memory(memory, path, "s2")
        other.begin("how deep is the river?")
        assert await other.recall() == ()
    finally:
        await memory.close()
    assert [c.request_id for c in path.calls][:2] == ["req-1.memory", "req-1.memory1"]


async def test_a_round_recalls_what_the_round_before_it_stored(tmp_path: Path) -> None:
    memory = ResonanceMemory(tmp_path / "memory")
    try:
        run = run_memory(memory, FakePath())
        run.begin("is it truth?")
        assert await run.recall() == ()
        run.remember(1, [("maat", "truth is balance")])  # not awaited: the next recall waits
        assert await run.recall() == ("truth is balance",)
    finally:
        await memory.close()


async def test_a_refused_embedding_is_recorded_and_logged_by_type_only(tmp_path: Path) -> None:
    memory = ResonanceMemory(tmp_path / "memory")
    path = FakePath(refuse=True)
    try:
        run = run_memory(memory, path)
        run.begin("a secret question")
        assert await run.recall() == ()
        run.remember(1, [("maat", "a secret answer")])
        result = await run.finish()
    finally:
        await memory.close()
    assert result["recalled"] == result["stored"] == 0
    assert result["error"] == "MODEL_NOT_ALLOWED: no embeddings for you"
    assert path.logged == [("council memory failed",
                            {"council": "pantheon", "error": "EmbeddingFailed"})] * 2  # fmt: skip
    assert not (tmp_path / "memory").exists()


async def test_a_store_failure_is_recorded_and_the_run_goes_on(tmp_path: Path) -> None:
    memory = ResonanceMemory(tmp_path / "memory")
    path = FakePath()
    try:  # the collection holds 2-dimensional vectors; the toy embedding has 4
        await memory.store("pantheon", "s1", [Remembered("maat", 1, "old", [1.0, 0.0])])
        run = run_memory(memory, path)
        run.begin("what flows?")
        assert await run.recall() == ()
        run.remember(1, [("maat", "the river flows")])
        result = await run.finish()
    finally:
        await memory.close()
    assert result["stored"] == 0 and result["error"].startswith("MEMORY_STORE_FAILED: ")
    assert "2 dimensions" in result["error"]
    assert {kw["error"] for _, kw in path.logged} == {"MemoryStoreError"}


def test_no_session_or_no_memory_means_no_run_memory(tmp_path: Path) -> None:
    memory = ResonanceMemory(tmp_path / "memory")
    path = cast(RequestPath, FakePath())
    assert session_memory(memory, path, COUNCIL, caller(None)) is None
    assert session_memory(None, path, COUNCIL, caller()) is None
    plain = COUNCIL.model_copy(update={"memory": None})
    assert session_memory(memory, path, plain, caller()) is None


async def test_closing_a_run_cancels_what_still_runs(tmp_path: Path) -> None:
    memory = ResonanceMemory(tmp_path / "memory")
    held = asyncio.Event()

    class SlowPath(FakePath):
        async def dispatch(self, call: Call) -> Answer | Rejection:
            held.set()
            await asyncio.Event().wait()  # never answers
            raise AssertionError

    try:
        run = run_memory(memory, SlowPath())
        run.begin("what flows?")
        await held.wait()
        others = asyncio.all_tasks() - {asyncio.current_task()}
        assert others and not any(t.done() for t in others)
        run.close()
        await asyncio.gather(*others, return_exceptions=True)
        assert all(t.cancelled() for t in others)
    finally:
        await memory.close()
