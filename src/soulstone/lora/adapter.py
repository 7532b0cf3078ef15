"""Validate an adapter folder against the soulstone it is meant for (reads headers only)."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import stat
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import IO, Any

from soulstone.codex.models import Codex, Soulstone
from soulstone.errors import SoulstoneError
from soulstone.lora.budget import LORA_LAYERS, engine_budget, tensor_elements

CONFIG = "adapter_config.json"
WEIGHTS = "adapter_model.safetensors"
MAX_CONFIG_BYTES = 1 << 20
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
NAME_RULE = "1 to 64 letters, digits, '.', '_' or '-', starting with a letter or digit, no '..'"
FORBIDDEN_TENSORS = ("embed_tokens", "lm_head")
SUPPORTED_MODULES = LORA_LAYERS


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


def check_name(name: object, codex: Codex, adapters: Collection[str]) -> str:
    """The name, when clients can ask for an adapter by it; AdapterRefused says why not.

    A name is safe as a path part and in a URL, and is neither a model a
    soulstone of the codex serves nor the name of an adapter already stored.
    """
    if not isinstance(name, str) or not name:
        raise AdapterRefused(f"an adapter needs a name ({NAME_RULE})")
    if NAME.fullmatch(name) is None or ".." in name:
        raise AdapterRefused(f"{name!r} is not an adapter name ({NAME_RULE})")
    for soulstone in codex.soulstones:
        if name in soulstone.models:
            raise AdapterRefused(f"{name!r} is a model [{soulstone.id}] serves: pick another name")
    if name in adapters:
        raise AdapterRefused(f"an adapter named {name!r} exists: remove it first")
    return name


def open_regular(path: Path) -> IO[bytes]:
    """Open a regular file for reading, never through a symbolic link; AdapterRefused if not."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise AdapterRefused(f"{path}: a symbolic link: put the file itself there") from None
        raise AdapterRefused(f"{path}: cannot be read ({error.strerror})") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise AdapterRefused(f"{path}: not a regular file")
    return os.fdopen(fd, "rb")


def sha256_file(path: Path) -> str:
    """The sha256 (hex) of a regular file's bytes (never read through a symbolic link)."""
    digest = hashlib.sha256()
    with open_regular(path) as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def adapter_files(folder: Path) -> list[Path]:
    """The files stored for an adapter: the folder's regular files, by name.

    Symbolic links, sub-folders, other special files and names starting with
    a dot (a trainer's temporary files) are skipped; the two files every
    adapter needs are checked by `inspect_adapter`, which refuses them as links.
    """
    try:
        with os.scandir(folder) as entries:
            return sorted(
                Path(entry.path) for entry in entries
                if not entry.name.startswith(".") and entry.is_file(follow_symlinks=False)
            )  # fmt: skip
    except OSError as error:
        raise AdapterRefused(f"{folder}: cannot be listed ({error.strerror})") from None


def _require_regular(path: Path) -> None:
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        raise AdapterRefused(f"{path}: missing (every adapter needs {path.name})") from None
    except OSError as error:
        raise AdapterRefused(f"{path}: cannot be read ({error.strerror})") from None
    if stat.S_ISLNK(mode):
        raise AdapterRefused(f"{path}: a symbolic link: put the file itself in the adapter folder")
    if not stat.S_ISREG(mode):
        raise AdapterRefused(f"{path}: not a regular file")


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
    if soulstone.model:
        candidates.add(soulstone.model)
    if soulstone.model_path:
        candidates |= {soulstone.model_path, PurePosixPath(soulstone.model_path).name}
    return base_model in candidates or PurePosixPath(base_model).name in candidates


def _admit_memory(name: str, weights_path: Path, soulstone: Soulstone) -> None:
    """AdapterRefused when the adapter needs more device memory than one slot of the engine."""
    budget = engine_budget(soulstone)
    if budget is None:
        return  # the model's shapes are unknown (no local model_path): rank decides alone
    try:
        elements = tensor_elements(weights_path)
    except (OSError, ValueError) as error:
        raise AdapterRefused(f"{weights_path}: not a readable safetensors file: {error}") from None
    refusal = budget.refusal(name, elements)
    if refusal is not None:
        raise AdapterRefused(f"{weights_path}: {refusal}")


def inspect_adapter(
    name: str, folder: Path, soulstone: Soulstone, any_base: bool = False
) -> AdapterInfo:
    """Validate an adapter folder for a soulstone; AdapterRefused names the file and reason.

    Blocking (reads and hashes every file): call it off the event loop.
    """
    config_path, weights_path = folder / CONFIG, folder / WEIGHTS
    if not folder.is_dir():
        raise AdapterRefused(f"{folder}: not a folder")
    _require_regular(config_path)
    _require_regular(weights_path)
    try:
        with open_regular(config_path) as handle:
            raw = handle.read(MAX_CONFIG_BYTES + 1)
        if len(raw) > MAX_CONFIG_BYTES:
            raise ValueError(f"larger than {MAX_CONFIG_BYTES} bytes")
        config: Any = json.loads(raw.decode("utf-8"))
        rank = int(config["r"])
        alpha = float(config.get("lora_alpha", rank))
        modules = config.get("target_modules") or []
        base_model = str(config.get("base_model_name_or_path") or "")
        targets = tuple(sorted([modules] if isinstance(modules, str) else map(str, modules)))
        if rank < 1:
            raise ValueError(f"rank {rank} is below 1")
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        raise AdapterRefused(f"{config_path}: not a LoRA config ({error})") from None
    if soulstone.lora is None:
        raise AdapterRefused(f"[{soulstone.id}] takes no adapters: give it a `lora` table")
    if rank > soulstone.lora.max_lora_rank:
        raise AdapterRefused(f"{config_path}: rank {rank} is above [{soulstone.id}]'s "
                             f"max_lora_rank {soulstone.lora.max_lora_rank}")  # fmt: skip
    if not any_base and not _base_matches(base_model, soulstone):
        raise AdapterRefused(
            f"{config_path}: base model {base_model!r} is not [{soulstone.id}]'s model "
            "(its model, model_path or a served name); --any-base overrides"
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
    _admit_memory(name, weights_path, soulstone)
    stored = adapter_files(folder)
    files = {p.name: sha256_file(p) for p in stored}
    size = sum(p.lstat().st_size for p in stored)
    return AdapterInfo(name, soulstone.id, rank, alpha, targets, base_model, files, size)
