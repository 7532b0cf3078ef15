"""Adapter device memory: an adapter's estimate and an engine's adapter budget (headers only).

vLLM keeps `max_loras` adapter slots on the device, each sized for an
adapter of `max_lora_rank` on every linear layer LoRA can touch: a slot
holds `max_lora_rank × (in + out)` numbers per such layer, in the engine's
dtype. An adapter is estimated the same way from its own tensors (rank ×
dims, in the engine's dtype, since vLLM converts it): one that needs more
than a slot cannot be held, whatever its rank says. Only safetensors headers
are read, never the weights.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from math import prod
from pathlib import Path
from typing import Any

from soulstone.codex.engines import option
from soulstone.codex.models import Soulstone

HEADER_LIMIT = 100 << 20  # a safetensors header larger than this is not one
DTYPE_BYTES = {"F64": 8, "I64": 8, "U64": 8, "F32": 4, "I32": 4, "U32": 4, "F16": 2,
               "BF16": 2, "I16": 2, "U16": 2, "I8": 1, "U8": 1, "BOOL": 1, "F8_E4M3": 1,
               "F8_E5M2": 1}  # fmt: skip
ENGINE_DTYPES = {"float32": 4, "float": 4, "float16": 2, "half": 2, "bfloat16": 2}
# The linear layers vLLM applies LoRA to (as adapter.SUPPORTED_MODULES, by weight name).
LORA_LAYERS = frozenset({
    "q_proj", "k_proj", "v_proj", "o_proj", "qkv_proj", "gate_proj", "up_proj", "down_proj",
    "gate_up_proj", "dense", "dense_h_to_4h", "dense_4h_to_h", "query_key_value", "c_attn",
    "c_proj", "c_fc", "w1", "w2", "w3", "wo", "wqkv", "fc1", "fc2", "out_proj",
})  # fmt: skip
MIB = 1 << 20


def read_header(path: Path) -> dict[str, Any]:
    """The JSON header of a safetensors file: tensor name -> {dtype, shape, ...}.

    ValueError when the file is not one (too short, header too large, not JSON).
    """
    with path.open("rb") as handle:
        head = handle.read(8)
        if len(head) < 8:
            raise ValueError(f"{path}: too short for a safetensors file")
        (length,) = struct.unpack("<Q", head)
        if length > HEADER_LIMIT:
            raise ValueError(f"{path}: a header of {length} bytes is not a safetensors header")
        raw = handle.read(length)
    try:
        header = json.loads(raw)
    except ValueError:
        raise ValueError(f"{path}: the safetensors header is not JSON") from None
    if not isinstance(header, dict):
        raise ValueError(f"{path}: the safetensors header is not a JSON object")
    header.pop("__metadata__", None)
    return header


def _shape(entry: Any) -> list[int]:
    shape = entry.get("shape") if isinstance(entry, dict) else None
    if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise ValueError(f"a tensor entry without a valid shape: {entry!r}")
    return shape


def tensor_elements(path: Path) -> int:
    """How many numbers the tensors of a safetensors file hold (read from its header)."""
    return sum(prod(_shape(entry)) for entry in read_header(path).values())


@dataclass(frozen=True)
class BaseShapes:
    """What one adapter slot must hold per rank: the sum of (in + out) over LoRA layers."""

    dims_per_rank: int
    dtype_bytes: int  # of the base's weights


def base_shapes(model_path: Path) -> BaseShapes | None:
    """The LoRA-able layers of a Hugging Face model folder, or None when there are none to read."""
    if not model_path.is_dir():
        return None
    total, dtype_bytes = 0, 0
    for weights in sorted(model_path.glob("*.safetensors")):
        for name, entry in read_header(weights).items():
            parts = name.split(".")
            shape = _shape(entry)
            if len(parts) < 2 or parts[-1] != "weight" or parts[-2] not in LORA_LAYERS:
                continue
            if len(shape) != 2:
                continue
            total += shape[0] + shape[1]
            dtype_bytes = dtype_bytes or DTYPE_BYTES.get(str(entry.get("dtype")), 0)
    if total == 0 or dtype_bytes == 0:
        return None
    return BaseShapes(total, dtype_bytes)


@dataclass(frozen=True)
class AdapterBudget:
    """The device memory an engine keeps for adapters: `slots` slots of `slot_bytes` each."""

    soulstone: str
    slots: int
    max_lora_rank: int
    slot_bytes: int
    dtype_bytes: int

    @property
    def total_bytes(self) -> int:
        """max_loras × max_lora_rank on the model's shapes."""
        return self.slots * self.slot_bytes

    def estimate(self, elements: int) -> int:
        """An adapter's device memory: its numbers in the engine's dtype."""
        return elements * self.dtype_bytes

    def refusal(self, name: str, elements: int) -> str | None:
        """Why an adapter of this many numbers cannot be held, or None when it fits a slot."""
        needed = self.estimate(elements)
        if needed <= self.slot_bytes:
            return None
        return (
            f"{name} needs about {needed / MIB:.2f} MiB of device memory, more than one adapter "
            f"slot of [{self.soulstone}] holds ({self.slot_bytes / MIB:.2f} MiB: its adapter "
            f"budget is max_loras {self.slots} × max_lora_rank {self.max_lora_rank} on its "
            f"model's shapes = {self.total_bytes / MIB:.2f} MiB)"
        )


def engine_dtype_bytes(soulstone: Soulstone, shapes: BaseShapes) -> int:
    """Bytes per number on the engine: exec's `--dtype` when it names one, else the weights'."""
    given = option(soulstone.argv, "--dtype")
    return ENGINE_DTYPES.get((given or "").lower(), shapes.dtype_bytes)


def engine_budget(soulstone: Soulstone) -> AdapterBudget | None:
    """The soulstone's adapter budget, or None when it takes no adapters or its model is unknown.

    Blocking (reads the model's safetensors headers): call it off the event loop.
    """
    lora, model_path = soulstone.lora, soulstone.model_path
    if lora is None or model_path is None:
        return None
    try:
        shapes = base_shapes(Path(model_path))
    except (OSError, ValueError):
        return None
    if shapes is None:
        return None
    dtype_bytes = engine_dtype_bytes(soulstone, shapes)
    slot = lora.max_lora_rank * shapes.dims_per_rank * dtype_bytes
    return AdapterBudget(soulstone.id, lora.max_loras, lora.max_lora_rank, slot, dtype_bytes)
