"""Hot adapters: loaded into running vLLM engines by name, least recently used evicted.

An adapter in use by a request is never evicted; concurrent first requests
for one adapter load it once; a load the engine cannot take (too many in
use, rank above its limit) is refused before it reaches the engine.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

import aiohttp
import orjson

from soulstone.codex.models import Soulstone
from soulstone.errors import Refusal
from soulstone.lora.cache import AdapterCache
from soulstone.lora.registry import AdapterRecord, Registry
from soulstone.runtimes.upstream import Upstreams

TIMEOUT = aiohttp.ClientTimeout(total=120)


class AdapterUnavailable(Refusal):
    """The adapter cannot be made hot now: HTTP status, code, and seconds worth waiting."""

    def __init__(self, status: int, code: str, message: str, retry_after: int = 0) -> None:
        super().__init__(status, code, message, retry_after=retry_after or None)


@dataclass
class _Engine:
    loaded: OrderedDict[str, int] = field(default_factory=OrderedDict)  # name -> in use
    loading: dict[str, asyncio.Future[None]] = field(default_factory=dict)


class HotAdapters:
    """Which adapters each engine holds, and the calls that load and unload them."""

    def __init__(self, upstreams: Upstreams, registry: Registry, cache: AdapterCache) -> None:
        self.upstreams = upstreams
        self.registry = registry
        self.cache = cache
        self._engines: dict[str, _Engine] = {}
        self.loads = 0
        self.evictions = 0
        self.on_load: Callable[[], None] = lambda: None
        self.on_evict: Callable[[], None] = lambda: None

    def hot(self, soulstone_id: str) -> list[str]:
        """The adapters loaded in this soulstone's engine, least recently used first."""
        engine = self._engines.get(soulstone_id)
        return list(engine.loaded) if engine else []

    def forget(self, soulstone_id: str) -> None:
        """The engine stopped or restarted: it holds no adapters any more."""
        self._engines.pop(soulstone_id, None)

    async def acquire(self, soulstone: Soulstone, record: AdapterRecord) -> None:
        """Make the adapter hot in this engine and mark it in use by one request."""
        engine = self._engines.setdefault(soulstone.id, _Engine())
        while record.name not in engine.loaded:
            pending = engine.loading.get(record.name)
            if pending is not None:
                await asyncio.shield(pending)
                continue
            future = asyncio.get_running_loop().create_future()
            engine.loading[record.name] = future
            try:
                await self._load(soulstone, engine, record)
                future.set_result(None)
            except BaseException as error:
                future.set_exception(error)
                future.exception()  # retrieved: waiters re-raise it themselves
                raise
            finally:
                engine.loading.pop(record.name, None)
        engine.loaded[record.name] += 1
        engine.loaded.move_to_end(record.name)

    async def prefetch(self, soulstone: Soulstone, record: AdapterRecord) -> None:
        """Warm an adapter likely to be asked for next; load it too when a slot is free."""
        await asyncio.to_thread(self.cache.warm, record, self.registry.blob_paths(record.name))
        engine = self._engines.setdefault(soulstone.id, _Engine())
        lora = soulstone.lora
        free = lora is not None and len(engine.loaded) + len(engine.loading) < lora.max_loras
        if free and record.name not in engine.loaded and record.name not in engine.loading:
            await self.acquire(soulstone, record)
            self.release(soulstone, record.name)

    def release(self, soulstone: Soulstone, name: str) -> None:
        """One request on this adapter finished."""
        engine = self._engines.get(soulstone.id)
        if engine is not None and name in engine.loaded:
            engine.loaded[name] = max(0, engine.loaded[name] - 1)

    async def _load(self, soulstone: Soulstone, engine: _Engine, record: AdapterRecord) -> None:
        lora = soulstone.lora
        if lora is None or soulstone.engine != "vllm":
            message = f"[{soulstone.id}] cannot load adapters at run time"
            raise AdapterUnavailable(409, "ADAPTER_REFUSED", message)
        if record.rank > lora.max_lora_rank:
            message = f"{record.name} has rank {record.rank}, above {lora.max_lora_rank}"
            raise AdapterUnavailable(409, "ADAPTER_REFUSED", message)
        while len(engine.loaded) + len(engine.loading) - 1 >= lora.max_loras:
            idle = next((name for name, uses in engine.loaded.items() if uses == 0), None)
            if idle is None:
                message = f"[{soulstone.id}] holds {lora.max_loras} adapters, all in use"
                raise AdapterUnavailable(503, "ADAPTER_SLOTS_BUSY", message, 2)
            await self._unload(soulstone, engine, idle)
            self.evictions += 1
            self.on_evict()
        folder = self.cache.warm(record, self.registry.blob_paths(record.name))
        body = {"lora_name": record.name, "lora_path": str(folder)}
        status, text = await self._call(soulstone, "/v1/load_lora_adapter", body)
        if status != 200 and "already" not in text:
            message = f"the engine refused {record.name}: {text[:300]}"
            raise AdapterUnavailable(502, "ADAPTER_LOAD_FAILED", message)
        engine.loaded[record.name] = 0
        self.loads += 1
        self.on_load()

    async def _unload(self, soulstone: Soulstone, engine: _Engine, name: str) -> None:
        engine.loaded.pop(name, None)
        await self._call(soulstone, "/v1/unload_lora_adapter", {"lora_name": name})

    async def unload(self, soulstone: Soulstone, name: str) -> bool:
        """Unload an adapter that no request uses; False when it was not hot."""
        engine = self._engines.get(soulstone.id)
        if engine is None or name not in engine.loaded:
            return False
        if engine.loaded[name]:
            raise AdapterUnavailable(409, "ADAPTER_IN_USE", f"{name} serves requests right now")
        await self._unload(soulstone, engine, name)
        return True

    async def _call(self, soulstone: Soulstone, path: str, body: dict[str, str]) -> tuple[int, str]:
        session = self.upstreams.session(soulstone)
        try:
            async with session.post(self.upstreams.url(soulstone, path), data=orjson.dumps(body),
                                    headers={"Content-Type": "application/json"},
                                    timeout=TIMEOUT) as response:  # fmt: skip
                return response.status, await response.text()
        except (aiohttp.ClientError, OSError, TimeoutError) as error:
            message = f"the engine did not answer {path}: {error}"
            raise AdapterUnavailable(502, "ADAPTER_LOAD_FAILED", message) from None
