"""The adapter registry's owner thread: ZODB is opened and used by that thread alone."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Concatenate, ParamSpec, TypeVar

from soulstone.lora.adapter import AdapterInfo
from soulstone.lora.registry import AdapterRecord, Registry, RegistryError

P = ParamSpec("P")
T = TypeVar("T")


def _close_if_opened(opened: Future[Registry]) -> None:
    if not opened.cancelled() and opened.exception() is None:
        opened.result().close()


class RegistryOwner:
    """The registry behind one worker thread, for the event loop to await.

    The thread opens the database, holds its one connection, runs every call
    one at a time in the order they were made, and closes it: no other thread
    touches ZODB, and the loop never blocks on it. A caller that is cancelled
    stops waiting: its call is dropped if it had not started, else it finishes
    (an add commits or aborts whole).
    """

    def __init__(self, executor: ThreadPoolExecutor, registry: Registry) -> None:
        """Use `RegistryOwner.open`: the registry must be opened in the executor's thread."""
        self._executor = executor
        self._registry = registry
        self._closed = False

    @classmethod
    async def open(cls, folder: Path) -> RegistryOwner:
        """Open the registry in `folder` in a new owner thread; RegistryError if it cannot be."""
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="soulstone-registry")
        opened = executor.submit(Registry, folder)
        try:
            registry = await asyncio.wrap_future(opened)
        except BaseException:
            executor.submit(_close_if_opened, opened)  # runs after the open: one thread
            executor.shutdown(wait=False)
            raise
        return cls(executor, registry)

    async def call(
        self, action: Callable[Concatenate[Registry, P], T], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """Run `action(registry, *args, **kwargs)` in the owner thread; its result or error."""
        if self._closed:
            raise RegistryError("the adapter registry is closed (the gateway is stopping)")
        work = functools.partial(action, self._registry, *args, **kwargs)
        return await asyncio.wrap_future(self._executor.submit(work))

    async def records(self) -> list[AdapterRecord]:
        """Every adapter, by name."""
        return await self.call(Registry.records)

    async def get(self, name: str) -> AdapterRecord | None:
        """An adapter's record, or None."""
        return await self.call(Registry.get, name)

    async def add(self, info: AdapterInfo, folder: Path) -> AdapterRecord:
        """Store an inspected adapter folder in one transaction; RegistryError if refused."""
        return await self.call(Registry.add, info, folder)

    async def remove(self, name: str) -> AdapterRecord:
        """Delete an adapter; RegistryError when there is none of that name."""
        return await self.call(Registry.remove, name)

    async def blob_paths(self, name: str) -> dict[str, str]:
        """The committed blob file of each of an adapter's files; RegistryError if it is gone."""
        return await self.call(Registry.blob_paths, name)

    async def close(self) -> None:
        """Close the database after the calls already made, then end the thread."""
        if self._closed:
            return
        self._closed = True
        closing = self._executor.submit(self._registry.close)
        self._executor.shutdown(wait=False)
        await asyncio.wrap_future(closing)
