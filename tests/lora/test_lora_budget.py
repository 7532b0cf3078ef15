"""Admission by memory: an adapter's estimate against its engine's adapter slots (headers only)."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

import pytest

from helpers import load, write
from lora_helpers import write_adapter, write_base_model
from soulstone.codex.models import Soulstone
from soulstone.lora.adapter import AdapterRefused, inspect_adapter
from soulstone.lora.budget import engine_budget, tensor_elements
from soulstone.lora.cache import AdapterCache
from soulstone.lora.hot import AdapterUnavailable, HotAdapters
from soulstone.lora.owner import RegistryOwner

TABLE = """
[tiny]
port = 9
exec = ["vllm", "serve", "{model}", "--gpu-memory-utilization", "0.5"{dtype}]
model_path = "{model}"
lora = {{ max_loras = 2, max_lora_rank = 8 }}
"""
# The tiny Llama's LoRA layers per rank: 2 layers × (4 × (128 + 128) + 2 × (128 + 256) + 384).
DIMS_PER_RANK = 2 * (4 * 256 + 2 * 384 + 384)


def base(tmp_path: Path, dtype: str = "") -> Soulstone:
    model = write_base_model(tmp_path / "model")
    extra = f', "--dtype", "{dtype}"' if dtype else ""
    codex = load(write(tmp_path / "codex", {"c.toml": TABLE.format(model=model, dtype=extra)}))
    soulstone = codex.get("tiny")
    assert soulstone is not None
    return soulstone


def test_the_budget_is_max_loras_times_max_lora_rank_on_the_model_shapes(tmp_path: Path) -> None:
    budget = engine_budget(base(tmp_path))
    assert budget is not None
    assert (budget.slots, budget.max_lora_rank, budget.dtype_bytes) == (2, 8, 4)
    assert budget.slot_bytes == 8 * DIMS_PER_RANK * 4
    assert budget.total_bytes == 2 * budget.slot_bytes
    halved = engine_budget(base(tmp_path / "half", dtype="bfloat16"))
    assert halved is not None and halved.slot_bytes == budget.slot_bytes // 2
    unknown = dataclasses.replace(base(tmp_path / "gone"), model_path=str(tmp_path / "nothing"))
    assert engine_budget(unknown) is None


def test_an_adapter_is_estimated_from_its_header(tmp_path: Path) -> None:
    folder = write_adapter(tmp_path / "a", rank=4, modules=("q_proj", "v_proj"))
    # Two layers' worth is not written: the helper writes layer 0 only.
    assert tensor_elements(folder / "adapter_model.safetensors") == 2 * (4 * 128 + 128 * 4)


def test_add_refuses_an_adapter_larger_than_a_slot_naming_the_budget(tmp_path: Path) -> None:
    soulstone = base(tmp_path)
    fits = write_adapter(tmp_path / "fits", rank=8, base="model",
                         modules=("q_proj", "k_proj", "v_proj", "o_proj"))  # fmt: skip
    assert inspect_adapter("fits", fits, soulstone).rank == 8
    big = write_adapter(tmp_path / "big", rank=8, base="model", hidden=8192)
    with pytest.raises(AdapterRefused) as caught:
        inspect_adapter("big", big, soulstone)
    message = str(caught.value)
    assert "adapter_model.safetensors" in message and "big needs about 1.00 MiB" in message
    assert "max_loras 2 × max_lora_rank 8" in message and "[tiny]" in message


async def test_a_stored_adapter_over_the_budget_never_reaches_the_engine(
    tmp_path: Path, owner: RegistryOwner
) -> None:
    roomy = base(tmp_path)  # stored while the engine had room for it
    big = write_adapter(tmp_path / "big", rank=8, base="model", hidden=1024)
    info = await asyncio.to_thread(inspect_adapter, "big", big, roomy)
    record = await owner.add(info, big)
    small = write_base_model(tmp_path / "small", hidden=16, intermediate=32)
    tight = dataclasses.replace(roomy, model_path=str(small))  # the same table, a smaller model
    calls: list[str] = []

    async def engine(soulstone: Soulstone, path: str, body: dict[str, str]) -> tuple[int, str]:
        calls.append(path)
        return 200, "ok"

    hot = HotAdapters(engine, owner, AdapterCache(tmp_path / "cache"))
    with pytest.raises(AdapterUnavailable) as caught:
        await hot.acquire(tight, record)
    assert (caught.value.status, caught.value.code) == (409, "ADAPTER_REFUSED")
    assert "big needs about 0.12 MiB of device memory" in str(caught.value)
    assert "max_loras 2 × max_lora_rank 8" in str(caught.value)
    assert calls == [] and hot.hot("tiny") == []
    await hot.acquire(roomy, record)  # the same adapter fits the roomier declaration
    assert calls == ["/v1/load_lora_adapter"]
