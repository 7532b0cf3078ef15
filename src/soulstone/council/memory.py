"""Resonance memory's store: a council's answers and their vectors in Qdrant, by session.

One collection per council, created with the embedding's dimension on the
first store; one point per remembered answer, its payload the council,
session, persona, round, text and creation time. Qdrant runs in its embedded
local mode in a folder (`$XDG_DATA_HOME/soulstone/memory/`), or as a server
at a URL. The local mode is synchronous, not thread-safe and locks its folder
against other processes: every call runs in one owner thread, one at a time,
and the folder is opened on first use (a council without memory never
creates it) and held until `close`.
"""

from __future__ import annotations

import asyncio
import functools
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

from soulstone.errors import SoulstoneError

if TYPE_CHECKING:
    from qdrant_client import QdrantClient

P = ParamSpec("P")
T = TypeVar("T")

SESSION_FIELD = "session"


class MemoryStoreError(SoulstoneError):
    """The memory store could not be opened or refused a call (the message names where)."""


@dataclass(frozen=True, slots=True)
class Remembered:
    """One answer to remember: who gave it, in which round, its text and its vector."""

    persona: str
    round: int
    text: str
    vector: Sequence[float]


def payload(council: str, session: str, item: Remembered, created: float) -> dict[str, Any]:
    """A point's payload: what is stored beside the vector."""
    return {"council": council, "session": session, "persona": item.persona,
            "round": item.round, "text": item.text, "created": created}  # fmt: skip


class _Qdrant:
    """The Qdrant client, opened on first use; used only by the owner thread."""

    def __init__(self, folder: Path, url: str | None) -> None:
        self.folder = folder
        self.url = url
        self.client: QdrantClient | None = None
        self.sizes: dict[str, int] = {}  # collection -> vector size, as found or created

    @property
    def where(self) -> str:
        return self.url or str(self.folder)

    def open(self, create: bool) -> QdrantClient | None:
        """The client; None when the local folder does not exist and `create` is false."""
        if self.client is not None:
            return self.client
        if self.url is None and not create and not self.folder.exists():
            return None
        from qdrant_client import QdrantClient  # about a second: only when memory is used

        try:
            if self.url is not None:
                self.client = QdrantClient(url=self.url, check_compatibility=False)
            else:
                self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
                self.client = QdrantClient(path=str(self.folder))
        except RuntimeError as error:  # the local folder's lock is held by another process
            raise MemoryStoreError(
                f"{self.folder} is in use by another process (a gateway this command does not "
                f"reach at its socket?): {error}"
            ) from None
        return self.client

    def size(self, client: QdrantClient, collection: str) -> int | None:
        """The vector size of a collection, or None when it does not exist."""
        if collection not in self.sizes:
            if not client.collection_exists(collection):
                return None
            vectors = client.get_collection(collection).config.params.vectors
            size = getattr(vectors, "size", None)
            if not isinstance(size, int):
                raise MemoryStoreError(f"{self.where}: collection {collection!r} is not "
                                       "one soulstone made (no single vector size)")  # fmt: skip
            self.sizes[collection] = size
        return self.sizes[collection]

    def check_size(self, collection: str, size: int, have: int) -> None:
        if size != have:
            raise MemoryStoreError(
                f"{self.where}: collection {collection!r} holds vectors of {have} dimensions, "
                f"this embedding has {size} (did the council's embed_model change? forget "
                "its sessions, or delete the collection)"
            )

    def recall(self, council: str, session: str, vector: Sequence[float], top_k: int) -> list[str]:
        from qdrant_client import models

        client = self.open(create=False)
        if client is None:
            return []
        have = self.size(client, council)
        if have is None:
            return []
        self.check_size(council, len(vector), have)
        found = client.query_points(council, query=list(vector), limit=top_k, with_payload=True,
                                    query_filter=_session(models, session)).points  # fmt: skip
        return [str(p.payload["text"]) for p in found if p.payload and "text" in p.payload]

    def store(self, council: str, session: str, items: Sequence[Remembered],
              created: float) -> int:  # fmt: skip
        from qdrant_client import models

        if not items:
            return 0
        client = self.open(create=True)
        assert client is not None
        size = len(items[0].vector)
        if any(len(item.vector) != size for item in items):
            raise MemoryStoreError("the embeddings of one round differ in dimension")
        have = self.size(client, council)
        if have is None:
            vectors = models.VectorParams(size=size, distance=models.Distance.COSINE)
            client.create_collection(council, vectors_config=vectors)
            if self.url is not None:  # a server indexes the filter field; local mode cannot
                client.create_payload_index(council, SESSION_FIELD,
                                            models.PayloadSchemaType.KEYWORD)  # fmt: skip
            self.sizes[council] = have = size
        self.check_size(council, size, have)
        points = [models.PointStruct(id=str(uuid.uuid4()), vector=list(item.vector),
                                     payload=payload(council, session, item, created))
                  for item in items]  # fmt: skip
        client.upsert(council, points=points, wait=True)
        return len(points)

    def forget(self, session: str) -> int:
        from qdrant_client import models

        client = self.open(create=False)
        if client is None:
            return 0
        forgotten = 0
        for collection in client.get_collections().collections:
            chosen = _session(models, session)
            count = client.count(collection.name, count_filter=chosen, exact=True).count
            if count:
                client.delete(collection.name, wait=True,
                              points_selector=models.FilterSelector(filter=chosen))  # fmt: skip
                forgotten += count
        return forgotten

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None


def _session(models: Any, session: str) -> Any:
    """The filter that picks one session's points."""
    return models.Filter(
        must=[models.FieldCondition(key=SESSION_FIELD, match=models.MatchValue(value=session))]
    )


class ResonanceMemory:
    """Remembered answers by council and session, behind one owner thread.

    Nothing touches the folder until the first call: `recall` and `forget`
    on a folder that does not exist find nothing and create nothing; the
    first `store` creates it. Calls run one at a time in the order they were
    made; a caller that is cancelled stops waiting (a call already running
    finishes). Every failure of the store is a MemoryStoreError.
    """

    def __init__(self, folder: Path, url: str | None = None,
                 clock: Callable[[], float] = time.time) -> None:  # fmt: skip
        self._qdrant = _Qdrant(folder, url)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="soulstone-memory")
        self._clock = clock
        self._closed = False
        self._used = False  # no call yet: the owner thread never started

    @property
    def where(self) -> str:
        """The store's place: its folder, or its server's URL."""
        return self._qdrant.where

    async def _call(self, action: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        if self._closed:
            raise MemoryStoreError(f"{self.where}: the memory is closed (the gateway is stopping)")
        work = functools.partial(_mapped, self.where, functools.partial(action, *args, **kwargs))
        self._used = True
        return await asyncio.wrap_future(self._executor.submit(work))

    async def recall(self, council: str, session: str, vector: Sequence[float],
                     top_k: int) -> list[str]:  # fmt: skip
        """The texts of the session's `top_k` points nearest to `vector` (only that session's)."""
        return await self._call(self._qdrant.recall, council, session, vector, top_k)

    async def store(self, council: str, session: str, items: Sequence[Remembered]) -> int:
        """Remember answers of a session in the council's collection; how many were stored."""
        return await self._call(self._qdrant.store, council, session, items, self._clock())

    async def forget(self, session: str) -> int:
        """Delete every council's points of a session; how many there were."""
        return await self._call(self._qdrant.forget, session)

    async def close(self) -> None:
        """Close the store after the calls already made (releasing the folder), end the thread."""
        if self._closed:
            return
        self._closed = True
        if not self._used:
            self._executor.shutdown(wait=False)
            return
        closing = self._executor.submit(_mapped, self.where, self._qdrant.close)
        self._executor.shutdown(wait=False)
        await asyncio.wrap_future(closing)


def _mapped(where: str, work: Callable[[], T]) -> T:
    """Run work in the owner thread; any error of Qdrant becomes a MemoryStoreError."""
    try:
        return work()
    except MemoryStoreError:
        raise
    except Exception as error:
        raise MemoryStoreError(f"{where}: {type(error).__name__}: {error}") from error


def forget_session(folder: Path, url: str | None, session: str) -> int:
    """Forget a session with no gateway running: open the store here, delete, close."""

    async def forget() -> int:
        memory = ResonanceMemory(folder, url)
        try:
            return await memory.forget(session)
        finally:
            await memory.close()

    return asyncio.run(forget())
