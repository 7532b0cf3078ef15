"""Hot adapters: loaded into running vLLM engines by name, least recently used evicted.

An adapter in use by a request is never evicted; a request for another one
while every slot is in use waits until one is released (bounded, then 503);
concurrent first requests for one adapter load it once; a load the engine
cannot take (rank above its limit, more device memory than one adapter slot
holds) is refused before it reaches the engine.
Blocking work (the registry, hashing and copying files) runs off the event loop.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import orjson

from soulstone.codex.models import Soulstone
from soulstone.errors import Refusal
from soulstone.lora.adapter import WEIGHTS
from soulstone.lora.budget import AdapterBudget, engine_budget, tensor_elements
from soulstone.lora.cache import AdapterCache
from soulstone.lora.owner import RegistryOwner
from soulstone.lora.registry import AdapterRecord, RegistryError
from soulstone.runtimes.upstream import Upstreams

TIMEOUT = aiohttp.ClientTimeout(total=120)
SLOT_WAIT_S = 60.0
BUSY_RETRY_AFTER_S = 2

# POST a JSON body to a soulstone's engine: (HTTP status, response text).
EngineCall = Callable[[Soulstone, str, dict[str, str]], Awaitable[tuple[int, str]]]


class AdapterUnavailable(Refusal):
    """The adapter cannot be made hot now: HTTP status, code, and seconds worth waiting."""

    def __init__(self, status: int, code: str, message: str, retry_after: int = 0) -> None:
        super().__init__(status, code, message, retry_after=retry_after or None)


def upstream_call(upstreams: Upstreams) -> EngineCall:
    """The engine call through the gateway's pooled sessions; AdapterUnavailable if no answer."""

    async def call(soulstone: Soulstone, path: str, body: dict[str, str]) -> tuple[int, str]:
        session = upstreams.session(soulstone)
        try:
            async with session.post(upstreams.url(soulstone, path), data=orjson.dumps(body),
                                    headers={"Content-Type": "application/json"},
                                    timeout=TIMEOUT) as response:  # fmt: skip
                return response.status, await response.text()
        except (aiohttp.ClientError, OSError, TimeoutError) as error:
            message = f"the engine did not answer {path}: {error}"
            raise AdapterUnavailable(502, "ADAPTER_LOAD_FAILED", message) from None

    return call


class _EngineGone(Exception):
    """The engine stopped or restarted while a load waited for a slot: look again."""


@dataclass
class _Engine:
    loaded: OrderedDict[str, int] = field(default_factory=OrderedDict)  # name -> in use
    loading: dict[str, asyncio.Future[None]] = field(default_factory=dict)
    reserved: int = 0  # slots held by loads under way
    line: deque[object] = field(default_factory=deque)  # loads waiting for a slot, in order
    freed: asyncio.Event = field(default_factory=asyncio.Event)
    gone: bool = False

    def signal(self) -> None:
        """Wake every load waiting for a slot (each looks again)."""
        self.freed.set()
        self.freed = asyncio.Event()


class HotAdapters:
    """Which adapters each engine holds, and the calls that load and unload them."""

    def __init__(
        self, engine_call: EngineCall, registry: RegistryOwner, cache: AdapterCache,
        slot_wait: float = SLOT_WAIT_S,
    ) -> None:  # fmt: skip
        self.engine_call = engine_call
        self.registry = registry
        self.cache = cache
        self.slot_wait = slot_wait
        self._engines: dict[str, _Engine] = {}
        self._budgets: dict[Soulstone, AdapterBudget | None] = {}  # read once per declaration
        self.loads = 0
        self.evictions = 0
        self.on_load: Callable[[], None] = lambda: None
        self.on_evict: Callable[[], None] = lambda: None
        self.on_wait: Callable[[], None] = lambda: None  # a load waits for a slot (once each)
        # (action: load, evict or unload; soulstone id; adapter name), for the live feed
        self.on_change: Callable[[str, str, str], None] = lambda _action, _soulstone, _name: None

    def hot(self, soulstone_id: str) -> list[str]:
        """The adapters loaded in this soulstone's engine, least recently used first."""
        engine = self._engines.get(soulstone_id)
        return list(engine.loaded) if engine else []

    def forget(self, soulstone_id: str) -> None:
        """The engine stopped or restarted: it holds no adapters any more."""
        engine = self._engines.pop(soulstone_id, None)
        if engine is not None:
            engine.gone = True
            engine.signal()

    async def acquire(
        self, soulstone: Soulstone, record: AdapterRecord, wait: float | None = None
    ) -> None:
        """Make the adapter hot in this engine and mark it in use by one request.

        Every slot in use: waits up to `wait` seconds (default `slot_wait`) for
        a request to release one, then AdapterUnavailable 503 ADAPTER_SLOTS_BUSY.
        Refused or failed loads raise AdapterUnavailable with their status.
        """
        while True:
            engine = self._engines.setdefault(soulstone.id, _Engine())
            if record.name in engine.loaded:
                engine.loaded[record.name] += 1
                engine.loaded.move_to_end(record.name)
                return
            pending = engine.loading.get(record.name)
            if pending is not None:
                await asyncio.shield(pending)
                continue
            future = asyncio.get_running_loop().create_future()
            engine.loading[record.name] = future
            try:
                await self._load(soulstone, engine, record,
                                 self.slot_wait if wait is None else wait)  # fmt: skip
            except _EngineGone:
                future.set_result(None)  # everyone looks again, at the new engine
            except asyncio.CancelledError:
                future.set_result(None)  # this request went away; the others go on
                raise
            except BaseException as error:
                future.set_exception(error)
                future.exception()  # retrieved: waiters re-raise it themselves
                raise
            else:
                future.set_result(None)
            finally:
                engine.loading.pop(record.name, None)

    async def prefetch(self, soulstone: Soulstone, record: AdapterRecord) -> None:
        """Warm an adapter likely to be asked for next; load it too when a slot is free."""
        blobs = await self.registry.blob_paths(record.name)
        await asyncio.to_thread(self.cache.warm, record, blobs)
        engine = self._engines.setdefault(soulstone.id, _Engine())
        lora = soulstone.lora
        free = lora is not None and len(engine.loaded) + engine.reserved < lora.max_loras
        if free and record.name not in engine.loaded and record.name not in engine.loading:
            await self.acquire(soulstone, record, wait=0)
            self.release(soulstone, record.name)

    def release(self, soulstone: Soulstone, name: str) -> None:
        """One request on this adapter finished (a load waiting for a slot may take it)."""
        engine = self._engines.get(soulstone.id)
        if engine is not None and name in engine.loaded:
            engine.loaded[name] = max(0, engine.loaded[name] - 1)
            if engine.loaded[name] == 0:
                engine.signal()

    async def _load(
        self, soulstone: Soulstone, engine: _Engine, record: AdapterRecord, wait: float
    ) -> None:
        lora = soulstone.lora
        if lora is None or soulstone.engine != "vllm":
            message = f"[{soulstone.id}] cannot load adapters at run time"
            raise AdapterUnavailable(409, "ADAPTER_REFUSED", message)
        if record.rank > lora.max_lora_rank:
            message = f"{record.name} has rank {record.rank}, above {lora.max_lora_rank}"
            raise AdapterUnavailable(409, "ADAPTER_REFUSED", message)
        try:
            blobs = await self.registry.blob_paths(record.name)
            folder = await asyncio.to_thread(self.cache.warm, record, blobs)
        except RegistryError as error:
            raise AdapterUnavailable(404, "UNKNOWN_ADAPTER", str(error)) from None
        except (OSError, ValueError) as error:
            message = f"{record.name} could not be made warm: {error}"
            raise AdapterUnavailable(500, "ADAPTER_LOAD_FAILED", message) from None
        await self._admit_memory(soulstone, record.name, folder / WEIGHTS)
        await self._reserve(soulstone, engine, lora.max_loras, wait)
        try:
            body = {"lora_name": record.name, "lora_path": str(folder)}
            status, text = await self.engine_call(soulstone, "/v1/load_lora_adapter", body)
            if status != 200 and "already" not in text:
                message = f"the engine refused {record.name}: {text[:300]}"
                raise AdapterUnavailable(502, "ADAPTER_LOAD_FAILED", message)
            engine.loaded[record.name] = 0
        finally:
            engine.reserved -= 1
            engine.signal()
        self.loads += 1
        self.on_load()
        self.on_change("load", soulstone.id, record.name)

    async def _admit_memory(self, soulstone: Soulstone, name: str, weights: Path) -> None:
        """Refuse (409) an adapter that needs more device memory than one slot of the engine."""
        if soulstone not in self._budgets:
            self._budgets[soulstone] = await asyncio.to_thread(engine_budget, soulstone)
        budget = self._budgets[soulstone]
        if budget is None:
            return  # the model's shapes are unknown: the rank check decides alone
        try:
            elements = await asyncio.to_thread(tensor_elements, weights)
        except (OSError, ValueError) as error:
            message = f"{name}'s weights cannot be read: {error}"
            raise AdapterUnavailable(500, "ADAPTER_LOAD_FAILED", message) from None
        refusal = budget.refusal(name, elements)
        if refusal is not None:
            raise AdapterUnavailable(409, "ADAPTER_REFUSED", refusal)

    async def _reserve(
        self, soulstone: Soulstone, engine: _Engine, max_loras: int, wait: float
    ) -> None:
        """Hold a slot for one load: a free one, else the least recently used idle one's.

        With none, wait for a release, in line: loads take freed slots in the
        order they asked (first in, first out), and a new one never passes one
        that waits. After `wait` seconds, 503 ADAPTER_SLOTS_BUSY. An adapter in
        use is never unloaded.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        ticket = object()
        engine.line.append(ticket)
        waited = False
        try:
            while True:
                if engine.gone:
                    raise _EngineGone
                if engine.line[0] is ticket and await self._take_slot(soulstone, engine, max_loras):
                    return
                remaining = deadline - loop.time()
                busy = AdapterUnavailable(
                    503, "ADAPTER_SLOTS_BUSY",
                    f"[{soulstone.id}] holds {max_loras} adapters, all in use "
                    f"(waited {wait:g} s)", BUSY_RETRY_AFTER_S,
                )  # fmt: skip
                if remaining <= 0:
                    raise busy
                if not waited:
                    waited = True
                    self.on_wait()
                try:
                    await asyncio.wait_for(engine.freed.wait(), remaining)
                except TimeoutError:
                    raise busy from None
        finally:
            engine.line.remove(ticket)
            engine.signal()  # the next in line looks again

    async def _take_slot(self, soulstone: Soulstone, engine: _Engine, max_loras: int) -> bool:
        """Reserve a free slot, or evict the least recently used idle adapter for one."""
        if len(engine.loaded) + engine.reserved < max_loras:
            engine.reserved += 1
            return True
        idle = next((name for name, uses in engine.loaded.items() if uses == 0), None)
        if idle is None:
            return False
        engine.reserved += 1
        try:
            await self._unload(soulstone, engine, idle)
        except BaseException:
            engine.reserved -= 1
            raise
        self.evictions += 1
        self.on_evict()
        self.on_change("evict", soulstone.id, idle)
        return True

    async def _unload(self, soulstone: Soulstone, engine: _Engine, name: str) -> None:
        engine.loaded.pop(name, None)
        await self.engine_call(soulstone, "/v1/unload_lora_adapter", {"lora_name": name})

    async def unload(self, soulstone: Soulstone, name: str) -> bool:
        """Unload an adapter that no request uses; False when it was not hot."""
        engine = self._engines.get(soulstone.id)
        if engine is None or name not in engine.loaded:
            return False
        if engine.loaded[name]:
            raise AdapterUnavailable(409, "ADAPTER_IN_USE", f"{name} serves requests right now")
        try:
            await self._unload(soulstone, engine, name)
        finally:
            engine.signal()
        self.on_change("unload", soulstone.id, name)
        return True
