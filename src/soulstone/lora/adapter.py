"""Validate an adapter folder against the soulstone it is meant for (reads headers only)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from soulstone.codex.models import Soulstone
from soulstone.errors import SoulstoneError

CONFIG = "adapter_config.json"
WEIGHTS = "adapter_model.safetensors"
FORBIDDEN_TENSORS = ("embed_tokens", "lm_head")
SUPPORTED_MODULES = frozenset({
    "q_proj", "k_proj", "v_proj", "o_proj", "qkv_proj", "gate_proj", "up_proj", "down_proj",
    "gate_up_proj", "dense", "dense_h_to_4h", "dense_4h_to_h", "query_key_value", "c_attn",
    "c_proj", "c_fc", "w1", "w2", "w3", "wo", "wqkv", "fc1", "fc2", "out_proj",
})  # fmt: skip


class AdapterRefused(SoulstoneError):
    """An adapter that cannot go to its soulstone; the message names the file and reason."""


@dataclass(frozen=True)
class AdapterInfo:
    """What an adapter is, read from its files: metadata and per-file hashes."""

    name: str
    base: str
    rank: int
    alpha: float
    target_modules: tuple[str, ...]
    base_model: str
    files: dict[str, str] = field(default_factory=dict)  # file name -> sha256
    size: int = 0

    @property
    def digest(self) -> str:
        """One hash for the whole adapter (names and contents of its files)."""
        joined = "".join(f"{name}\0{sha}\n" for name, sha in sorted(self.files.items()))
        return hashlib.sha256(joined.encode()).hexdigest()


def sha256_file(path: Path) -> str:
    """The sha256 (hex) of a file's bytes."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def tensor_names(path: Path) -> list[str]:
    """The tensor names in a safetensors header (the weights are never loaded)."""
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="numpy") as weights:
            return list(weights.keys())
    except Exception as error:  # safetensors raises its own error types
        raise AdapterRefused(f"{path}: not a readable safetensors file: {error}") from None


def _base_matches(base_model: str, soulstone: Soulstone) -> bool:
    candidates = {*soulstone.models}
    if soulstone.model_path:
        candidates |= {soulstone.model_path, PurePosixPath(soulstone.model_path).name}
    return base_model in candidates or PurePosixPath(base_model).name in candidates


def inspect_adapter(
    name: str, folder: Path, soulstone: Soulstone, any_base: bool = False
) -> AdapterInfo:
    """Validate an adapter folder for a soulstone; AdapterRefused names the file and reason."""
    config_path, weights_path = folder / CONFIG, folder / WEIGHTS
    if not folder.is_dir():
        raise AdapterRefused(f"{folder}: not a folder")
    if not config_path.is_file():
        raise AdapterRefused(f"{config_path}: missing (every adapter needs {CONFIG})")
    if not weights_path.is_file():
        raise AdapterRefused(f"{weights_path}: missing (every adapter needs {WEIGHTS})")
    try:
        config: Any = json.loads(config_path.read_text(encoding="utf-8"))
        rank = int(config["r"])
        alpha = float(config.get("lora_alpha", rank))
        modules = config.get("target_modules") or []
        base_model = str(config.get("base_model_name_or_path") or "")
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise AdapterRefused(f"{config_path}: not a LoRA config ({error})") from None
    targets = tuple(sorted([modules] if isinstance(modules, str) else map(str, modules)))
    if soulstone.lora is None:
        raise AdapterRefused(f"[{soulstone.id}] takes no adapters: give it a `lora` table")
    if rank > soulstone.lora.max_lora_rank:
        raise AdapterRefused(f"{config_path}: rank {rank} is above [{soulstone.id}]'s "
                             f"max_lora_rank {soulstone.lora.max_lora_rank}")  # fmt: skip
    if not any_base and not _base_matches(base_model, soulstone):
        raise AdapterRefused(
            f"{config_path}: base model {base_model!r} is not [{soulstone.id}]'s model "
            "(its model_path or a served name); --any-base overrides"
        )
    if any(m in FORBIDDEN_TENSORS for m in targets):
        raise AdapterRefused(f"{config_path}: targets embed_tokens or lm_head: adapters that "
                             "change embed_tokens or lm_head are refused")  # fmt: skip
    unsupported = [m for m in targets if m not in SUPPORTED_MODULES]
    if unsupported:
        raise AdapterRefused(f"{config_path}: target modules {unsupported} are not ones "
                             f"{soulstone.engine} applies LoRA to")  # fmt: skip
    touched = [t for t in tensor_names(weights_path) if any(f in t for f in FORBIDDEN_TENSORS)]
    if touched:
        raise AdapterRefused(f"{weights_path}: holds weights for {touched[0]!r}: adapters that "
                             "change embed_tokens or lm_head are refused")  # fmt: skip
    files = {p.name: sha256_file(p) for p in sorted(folder.iterdir()) if p.is_file()}
    size = sum(p.stat().st_size for p in folder.iterdir() if p.is_file())
    return AdapterInfo(name, soulstone.id, rank, alpha, targets, base_model, files, size)
