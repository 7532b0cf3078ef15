"""Hot adapters in process: a fake engine call, a real registry (its owner thread) and cache."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from helpers import load, write
from lora_helpers import write_adapter
from soulstone.codex.models import Soulstone
from soulstone.lora.adapter import inspect_adapter
from soulstone.lora.cache import AdapterCache
from soulstone.lora.hot import AdapterUnavailable, HotAdapters
from soulstone.lora.owner import RegistryOwner
from soulstone.lora.registry import AdapterRecord, RegistryError

CODEX = """
[tiny]
port = 9
exec = ["vllm", "serve", "/models/tiny-llama", "--gpu-memory-utilization", "0.5"]
model_path = "/models/tiny-llama"
lora = {{ max_loras = {max_loras}, max_lora_rank = 8 }}
"""


@dataclass
class FakeEngine:
    """vLLM's load/unload endpoints, in process: records every call, checks the files exist."""

    calls: list[tuple[str, str]] = field(default_factory=list)

    async def call(self, soulstone: Soulstone, path: str, body: dict[str, str]) -> tuple[int, str]:
        verb = "load" if path == "/v1/load_lora_adapter" else "unload"
        if verb == "load":
            assert (Path(body["lora_path"]) / "adapter_model.safetensors").is_file()
        self.calls.append((verb, body["lora_name"]))
        return 200, "ok"


def soulstone_with(tmp_path: Path, max_loras: int) -> Soulstone:
    codex = load(write(tmp_path / "codex", {"c.toml": CODEX.format(max_loras=max_loras)}))
    soulstone = codex.get("tiny")
    assert soulstone is not None
    return soulstone


async def stored(
    owner: RegistryOwner, soulstone: Soulstone, tmp_path: Path, name: str, fill_mb: int = 0
) -> AdapterRecord:
    folder = write_adapter(tmp_path / "adapters" / name, fill_mb=fill_mb)
    info = await asyncio.to_thread(inspect_adapter, name, folder, soulstone)
    return await owner.add(info, folder)


async def one_slot_two_adapters(
    tmp_path: Path, owner: RegistryOwner, slot_wait: float = 60.0
) -> tuple[Soulstone, AdapterRecord, AdapterRecord, FakeEngine, HotAdapters, asyncio.Event]:
    """An engine with one adapter slot, adapters a and b stored, and an event set on a wait."""
    soulstone = soulstone_with(tmp_path, max_loras=1)
    a = await stored(owner, soulstone, tmp_path, "a")
    b = await stored(owner, soulstone, tmp_path, "b")
    engine = FakeEngine()
    hot = HotAdapters(engine.call, owner, AdapterCache(tmp_path / "cache"), slot_wait=slot_wait)
    waiting = asyncio.Event()
    hot.on_wait = waiting.set
    return soulstone, a, b, engine, hot, waiting


async def test_a_load_waits_for_a_released_slot_and_never_evicts_one_in_use(
    tmp_path: Path, owner: RegistryOwner
) -> None:
    soulstone, a, b, engine, hot, waiting = await one_slot_two_adapters(tmp_path, owner)
    await hot.acquire(soulstone, a)
    second = asyncio.create_task(hot.acquire(soulstone, b))
    await waiting.wait()
    assert not second.done()
    assert engine.calls == [("load", "a")]  # a is held: never unloaded for b
    assert hot.hot("tiny") == ["a"]
    hot.release(soulstone, "a")
    await second
    assert engine.calls == [("load", "a"), ("unload", "a"), ("load", "b")]
    assert hot.hot("tiny") == ["b"]
    assert hot.evictions == 1


async def test_waiting_loads_take_freed_slots_in_the_order_they_asked(
    tmp_path: Path, owner: RegistryOwner
) -> None:
    soulstone, a, b, engine, hot, _ = await one_slot_two_adapters(tmp_path, owner)
    c = await stored(owner, soulstone, tmp_path, "c")
    waits: list[asyncio.Event] = [asyncio.Event(), asyncio.Event()]
    hot.on_wait = lambda: next(w for w in waits if not w.is_set()).set()
    await hot.acquire(soulstone, a)
    second = asyncio.create_task(hot.acquire(soulstone, b))
    await waits[0].wait()
    third = asyncio.create_task(hot.acquire(soulstone, c))
    await waits[1].wait()
    hot.release(soulstone, "a")
    await second  # b asked first: it gets the slot a frees
    assert not third.done() and hot.hot("tiny") == ["b"]
    hot.release(soulstone, "b")
    await third
    assert engine.calls == [("load", "a"), ("unload", "a"), ("load", "b"), ("unload", "b"),
                            ("load", "c")]  # fmt: skip


async def test_a_new_load_never_passes_one_that_waits(tmp_path: Path, owner: RegistryOwner) -> None:
    soulstone, a, b, engine, hot, waiting = await one_slot_two_adapters(tmp_path, owner)
    c = await stored(owner, soulstone, tmp_path, "c")
    await hot.acquire(soulstone, a)
    second = asyncio.create_task(hot.acquire(soulstone, b))
    await waiting.wait()
    hot.release(soulstone, "a")  # a is idle now, and b waits for its slot
    with pytest.raises(AdapterUnavailable) as caught:
        await hot.acquire(soulstone, c, wait=0)  # c arrives later: not ahead of b
    assert caught.value.code == "ADAPTER_SLOTS_BUSY"
    await second
    assert engine.calls == [("load", "a"), ("unload", "a"), ("load", "b")]


async def test_no_slot_freed_in_time_is_503_with_retry_after(
    tmp_path: Path, owner: RegistryOwner
) -> None:
    soulstone, a, b, engine, hot, _ = await one_slot_two_adapters(tmp_path, owner, slot_wait=0)
    await hot.acquire(soulstone, a)
    with pytest.raises(AdapterUnavailable) as caught:
        await hot.acquire(soulstone, b)
    assert (caught.value.status, caught.value.code) == (503, "ADAPTER_SLOTS_BUSY")
    assert caught.value.retry_after is not None and caught.value.retry_after > 0
    assert engine.calls == [("load", "a")]
    hot.release(soulstone, "a")
    await hot.acquire(soulstone, b)  # the slot is idle now: a is evicted
    assert engine.calls == [("load", "a"), ("unload", "a"), ("load", "b")]


async def test_a_waiting_load_goes_to_the_restarted_engine(
    tmp_path: Path, owner: RegistryOwner
) -> None:
    soulstone, a, b, engine, hot, waiting = await one_slot_two_adapters(tmp_path, owner)
    await hot.acquire(soulstone, a)
    second = asyncio.create_task(hot.acquire(soulstone, b))
    await waiting.wait()
    hot.forget("tiny")  # the engine restarted: it holds nothing, a slot is free
    await second
    assert engine.calls == [("load", "a"), ("load", "b")]
    assert hot.hot("tiny") == ["b"]


async def test_a_cancelled_first_request_does_not_fail_the_others(
    tmp_path: Path, owner: RegistryOwner
) -> None:
    soulstone = soulstone_with(tmp_path, max_loras=1)
    a = await stored(owner, soulstone, tmp_path, "a")
    b = await stored(owner, soulstone, tmp_path, "b")
    engine = FakeEngine()
    hot = HotAdapters(engine.call, owner, AdapterCache(tmp_path / "cache"))
    waiting, joined = asyncio.Event(), asyncio.Event()
    hot.on_wait = waiting.set
    await hot.acquire(soulstone, a)
    first = asyncio.create_task(hot.acquire(soulstone, b))
    await waiting.wait()  # first holds b's load and waits for a slot

    async def follow() -> None:
        joined.set()  # runs on, without a pause, into waiting on first's load
        await hot.acquire(soulstone, b)

    follower = asyncio.create_task(follow())
    await joined.wait()
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    hot.release(soulstone, "a")
    await follower
    assert engine.calls == [("load", "a"), ("unload", "a"), ("load", "b")]


async def test_a_removed_adapter_is_404_not_a_crash(tmp_path: Path, owner: RegistryOwner) -> None:
    soulstone = soulstone_with(tmp_path, max_loras=1)
    a = await stored(owner, soulstone, tmp_path, "a")
    await owner.remove("a")
    hot = HotAdapters(FakeEngine().call, owner, AdapterCache(tmp_path / "cache"))
    with pytest.raises(AdapterUnavailable) as caught:
        await hot.acquire(soulstone, a)
    assert (caught.value.status, caught.value.code) == (404, "UNKNOWN_ADAPTER")
    with pytest.raises(RegistryError, match="no adapter named 'a'"):
        await owner.blob_paths("a")


async def test_a_50_mb_adapter_is_stored_warmed_and_loaded_without_stalling_the_loop(
    tmp_path: Path, owner: RegistryOwner
) -> None:
    soulstone = soulstone_with(tmp_path, max_loras=1)
    folder = write_adapter(tmp_path / "big", fill_mb=50)
    engine = FakeEngine()
    cache = AdapterCache(tmp_path / "cache")
    hot = HotAdapters(engine.call, owner, cache)
    loop = asyncio.get_running_loop()
    lags: list[float] = []
    done = asyncio.Event()

    async def tick() -> None:  # measures how late the loop wakes a sleeper
        while not done.is_set():
            before = loop.time()
            await asyncio.sleep(0.005)
            lags.append(loop.time() - before - 0.005)

    ticker = asyncio.create_task(tick())
    try:
        info = await asyncio.to_thread(inspect_adapter, "big", folder, soulstone)
        record = await owner.add(info, folder)
        await hot.acquire(soulstone, record)
    finally:
        done.set()
        await ticker
    print(f"event-loop lag while a 50 MB adapter was stored, warmed and loaded: "
          f"max {max(lags) * 1000:.1f} ms over {len(lags)} ticks")  # fmt: skip
    assert engine.calls == [("load", "big")]
    assert cache.intact(record)
    assert len(lags) > 10  # the ticker ran throughout the work
    assert max(lags) < 0.25
