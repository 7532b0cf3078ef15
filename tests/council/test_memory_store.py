"""ResonanceMemory on Qdrant's embedded local mode, with made-up vectors (no engine)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from qdrant_client import QdrantClient

from soulstone.council.memory import MemoryStoreError, Remembered, ResonanceMemory, forget_session

EAST, NORTH, NORTH_EAST = [1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.7, 0.7, 0.0]


@pytest.fixture
async def memory(tmp_path: Path) -> AsyncIterator[ResonanceMemory]:
    opened = ResonanceMemory(tmp_path / "memory", clock=lambda: 1234.5)
    try:
        yield opened
    finally:
        await opened.close()


async def test_recall_finds_the_nearest_of_the_session_only(memory: ResonanceMemory) -> None:
    stored = await memory.store("pantheon", "s1", [
        Remembered("maat", 1, "east answer", EAST), Remembered("thoth", 1, "north answer", NORTH),
    ])  # fmt: skip
    await memory.store("pantheon", "s2", [Remembered("maat", 1, "other session", EAST)])
    assert stored == 2
    assert await memory.recall("pantheon", "s1", [0.9, 0.1, 0.0], 1) == ["east answer"]
    assert await memory.recall("pantheon", "s1", [0.1, 0.9, 0.0], 1) == ["north answer"]
    assert await memory.recall("pantheon", "s1", NORTH_EAST, 5) in (
        ["east answer", "north answer"], ["north answer", "east answer"])  # fmt: skip
    assert await memory.recall("pantheon", "s2", NORTH, 5) == ["other session"]
    assert await memory.recall("pantheon", "s3", EAST, 5) == []
    assert await memory.recall("other-council", "s1", EAST, 5) == []


async def test_a_point_carries_council_session_persona_round_text_and_time(
    tmp_path: Path,
) -> None:
    memory = ResonanceMemory(tmp_path / "memory", clock=lambda: 1234.5)
    await memory.store("pantheon", "s1", [Remembered("maat", 2, "an answer", EAST)])
    await memory.close()
    client = QdrantClient(path=str(tmp_path / "memory"))  # the folder is free again
    try:
        [point], _ = client.scroll("pantheon", with_payload=True, with_vectors=True)
        assert point.payload == {"council": "pantheon", "session": "s1", "persona": "maat",
                                 "round": 2, "text": "an answer", "created": 1234.5}  # fmt: skip
        assert client.get_collection("pantheon").config.params.vectors.size == 3  # type: ignore[union-attr]
    finally:
        client.close()


async def test_forget_removes_a_session_from_every_council(memory: ResonanceMemory) -> None:
    await memory.store("pantheon", "s1", [Remembered("maat", 1, "a", EAST),
                                          Remembered("roc", 1, "b", NORTH)])  # fmt: skip
    await memory.store("trial", "s1", [Remembered("judge", 1, "c", [0.5, 0.5])])
    await memory.store("pantheon", "s2", [Remembered("maat", 1, "kept", EAST)])
    assert await memory.forget("s1") == 3
    assert await memory.recall("pantheon", "s1", EAST, 5) == []
    assert await memory.recall("trial", "s1", [0.5, 0.5], 5) == []
    assert await memory.recall("pantheon", "s2", EAST, 5) == ["kept"]
    assert await memory.forget("s1") == 0


async def test_memories_outlive_the_process_that_stored_them(tmp_path: Path) -> None:
    first = ResonanceMemory(tmp_path / "memory")
    await first.store("pantheon", "s1", [Remembered("maat", 1, "remembered", EAST)])
    await first.close()
    again = ResonanceMemory(tmp_path / "memory")
    try:
        assert await again.recall("pantheon", "s1", EAST, 4) == ["remembered"]
    finally:
        await again.close()


async def test_recall_and_forget_create_nothing(tmp_path: Path) -> None:
    memory = ResonanceMemory(tmp_path / "memory")
    try:
        assert await memory.recall("pantheon", "s1", EAST, 4) == []
        assert await memory.forget("s1") == 0
        assert await memory.store("pantheon", "s1", []) == 0
    finally:
        await memory.close()
    assert not (tmp_path / "memory").exists()


async def test_another_dimension_is_refused_naming_the_folder_and_collection(
    memory: ResonanceMemory, tmp_path: Path,
) -> None:  # fmt: skip
    await memory.store("pantheon", "s1", [Remembered("maat", 1, "a", EAST)])
    with pytest.raises(MemoryStoreError) as caught:
        await memory.store("pantheon", "s1", [Remembered("maat", 1, "b", [1.0, 0.0])])
    message = str(caught.value)
    assert str(tmp_path / "memory") in message and "'pantheon'" in message
    assert "3 dimensions" in message and "has 2" in message
    with pytest.raises(MemoryStoreError, match="3 dimensions"):
        await memory.recall("pantheon", "s1", [1.0, 0.0], 4)
    assert await memory.recall("pantheon", "s1", EAST, 4) == ["a"]  # still usable


async def test_a_folder_held_by_another_store_is_refused_naming_it(
    memory: ResonanceMemory, tmp_path: Path,
) -> None:  # fmt: skip
    await memory.store("pantheon", "s1", [Remembered("maat", 1, "a", EAST)])
    other = ResonanceMemory(tmp_path / "memory")
    try:
        with pytest.raises(MemoryStoreError, match=str(tmp_path / "memory")):
            await other.forget("s1")
    finally:
        await other.close()
    with pytest.raises(MemoryStoreError, match=str(tmp_path / "memory")):  # the CLI's way
        await asyncio.to_thread(forget_session, tmp_path / "memory", None, "s1")
    assert await memory.recall("pantheon", "s1", EAST, 4) == ["a"]  # nothing was forgotten


async def test_every_call_runs_in_one_owner_thread(tmp_path: Path) -> None:
    import qdrant_client.local.qdrant_local as local

    threads: set[int] = set()
    original = local.QdrantLocal.query_points

    def spy(self: local.QdrantLocal, *args: object, **kwargs: object) -> object:
        threads.add(threading.get_ident())
        return original(self, *args, **kwargs)  # type: ignore[arg-type]

    memory = ResonanceMemory(tmp_path / "memory")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(local.QdrantLocal, "query_points", spy)
        await memory.store("pantheon", "s1", [Remembered("maat", 1, "a", EAST)])
        for _ in range(3):
            await memory.recall("pantheon", "s1", EAST, 1)
    await memory.close()
    assert len(threads) == 1 and threading.get_ident() not in threads


async def test_a_closed_memory_refuses_calls(tmp_path: Path) -> None:
    memory = ResonanceMemory(tmp_path / "memory")
    await memory.close()
    with pytest.raises(MemoryStoreError, match="closed"):
        await memory.recall("pantheon", "s1", EAST, 1)


def test_forget_session_opens_and_releases_the_folder(tmp_path: Path) -> None:
    async def fill() -> None:
        memory = ResonanceMemory(tmp_path / "memory")
        await memory.store("pantheon", "s1", [Remembered("maat", 1, "a", EAST),
                                              Remembered("roc", 1, "b", NORTH)])  # fmt: skip
        await memory.close()

    asyncio.run(fill())
    assert forget_session(tmp_path / "memory", None, "s1") == 2
    assert forget_session(tmp_path / "memory", None, "s1") == 0  # the lock was released
