"""Adapter validation, the ZODB registry (crash safety included) and the warm cache."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import random
import re
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import write
from lora_helpers import write_adapter
from soulstone.codex.models import Codex, Soulstone
from soulstone.guard.audit import audit_caches
from soulstone.lora.adapter import AdapterRefused, check_name, inspect_adapter
from soulstone.lora.cache import AdapterCache
from soulstone.lora.registry import Registry, RegistryError, opened

SCRIPT = Path(sys.executable).parent / "soulstone"
CODEX = """
[tiny]
port = 9
exec = ["vllm", "serve", "/models/tiny-llama", "--gpu-memory-utilization", "0.5"]
model_path = "/models/tiny-llama"
lora = { max_loras = 2, max_lora_rank = 8 }

[plain]
port = 10
exec = ["vllm", "serve", "/models/other", "--gpu-memory-utilization", "0.5"]
"""


@pytest.fixture
def codex(tmp_path: Path) -> Codex:
    from helpers import load

    return load(write(tmp_path / "codex", {"c.toml": CODEX}))


def tiny(codex: Codex) -> Soulstone:
    soulstone = codex.get("tiny")
    assert soulstone is not None
    return soulstone


def test_inspect_accepts_a_good_adapter(tmp_path: Path, codex: Codex) -> None:
    info = inspect_adapter("good", write_adapter(tmp_path / "good"), tiny(codex))
    assert (info.rank, info.alpha, info.target_modules) == (4, 8.0, ("q_proj", "v_proj"))
    assert set(info.files) == {"adapter_config.json", "adapter_model.safetensors"}
    assert len(info.digest) == 64 and info.size > 0


@pytest.mark.parametrize(
    ("make", "words"),
    [
        (lambda p: write_adapter(p, rank=16), "rank 16 is above"),
        (lambda p: write_adapter(p, extra_tensors=("base_model.model.lm_head.lora_A.weight",)),
         "lm_head"),
        (lambda p: write_adapter(p, modules=("q_proj", "embed_tokens")), "embed_tokens"),
        (lambda p: write_adapter(p, base="some/other-model"), "base model 'some/other-model'"),
        (lambda p: write_adapter(p, modules=("conv9",)), "target modules ['conv9']"),
    ],
)  # fmt: skip
def test_inspect_refusals_name_the_file(
    tmp_path: Path, codex: Codex, make: object, words: str
) -> None:
    folder = make(tmp_path / "bad")  # type: ignore[operator]
    with pytest.raises(AdapterRefused) as caught:
        inspect_adapter("bad", folder, tiny(codex))
    assert words in str(caught.value)
    assert str(folder) in str(caught.value)


def test_inspect_refuses_broken_files(tmp_path: Path, codex: Codex) -> None:
    truncated = write_adapter(tmp_path / "truncated")
    weights = truncated / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:40])
    with pytest.raises(AdapterRefused, match="not a readable safetensors file"):
        inspect_adapter("t", truncated, tiny(codex))
    missing = write_adapter(tmp_path / "missing")
    (missing / "adapter_config.json").unlink()
    with pytest.raises(AdapterRefused, match=r"adapter_config\.json: missing"):
        inspect_adapter("m", missing, tiny(codex))
    plain = codex.get("plain")
    assert plain is not None
    with pytest.raises(AdapterRefused, match="takes no adapters"):
        inspect_adapter("p", write_adapter(tmp_path / "p"), plain)
    assert inspect_adapter("any", write_adapter(tmp_path / "any", base="x/y"), tiny(codex),
                           any_base=True).base_model == "x/y"  # fmt: skip


def test_a_hub_model_is_a_base(tmp_path: Path, codex: Codex) -> None:
    hub = dataclasses.replace(tiny(codex), model="org/base-7b", model_path=None)
    adapter = write_adapter(tmp_path / "a", base="org/base-7b")
    assert inspect_adapter("a", adapter, hub).base_model == "org/base-7b"
    with pytest.raises(AdapterRefused, match="its model, model_path or a served name"):
        inspect_adapter("a", adapter, dataclasses.replace(hub, model=None))


def test_registry_add_get_remove(tmp_path: Path, codex: Codex) -> None:
    folder = write_adapter(tmp_path / "a")
    info = inspect_adapter("a", folder, tiny(codex))
    with opened(tmp_path / "data") as registry:
        record = registry.add(info, folder)
        assert record.summary("cold")["sha256"] == info.digest
        with pytest.raises(RegistryError, match="exists"):
            registry.add(info, folder)
        blobs = registry.blob_paths("a")
        assert (
            Path(blobs["adapter_config.json"]).read_bytes()
            == (folder / "adapter_config.json").read_bytes()
        )
        with pytest.raises(RegistryError):
            Registry(tmp_path / "data")  # one process owns the database
    with opened(tmp_path / "data") as registry:
        assert [r.name for r in registry.records()] == ["a"]
        registry.remove("a")
        assert registry.get("a") is None


def test_warm_cache_builds_reuses_and_repairs(tmp_path: Path, codex: Codex) -> None:
    folder = write_adapter(tmp_path / "a")
    info = inspect_adapter("a", folder, tiny(codex))
    cache = AdapterCache(tmp_path / "cache")
    with opened(tmp_path / "data") as registry:
        record = registry.add(info, folder)
        assert not cache.is_warm(record)
        warm = cache.warm(record, registry.blob_paths("a"))
        assert warm.name == record.digest and cache.intact(record)
        stamp = (warm / "adapter_config.json").stat().st_mtime_ns
        assert cache.warm(record, registry.blob_paths("a")) == warm
        assert (warm / "adapter_config.json").stat().st_mtime_ns == stamp  # reused
        (warm / "adapter_model.safetensors").write_bytes(b"damaged")
        assert not cache.intact(record)
        cache.warm(record, registry.blob_paths("a"))
        assert cache.intact(record)  # rebuilt
        cache.remove(record)
        assert not warm.exists()
    assert not list((tmp_path / "cache").glob(".*.tmp"))


def test_a_killed_add_leaves_the_whole_adapter_or_nothing(tmp_path: Path) -> None:
    codex = write(tmp_path / "codex", {"c.toml": CODEX})
    folder = write_adapter(tmp_path / "big", fill_mb=48)
    env = {k: v for k, v in os.environ.items() if not k.startswith("XDG_")}
    env |= {"XDG_DATA_HOME": str(tmp_path / "xdg"), "XDG_RUNTIME_DIR": str(tmp_path / "run"),
            "HOME": str(tmp_path)}  # fmt: skip
    rng = random.Random(7)
    outcomes = []
    for attempt in range(6):
        process = subprocess.Popen(
            [str(SCRIPT), "--codex", str(codex), "lora", "add", f"big{attempt}", str(folder),
             "--base", "tiny"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        time.sleep(rng.uniform(0.2, 2.0))
        process.send_signal(signal.SIGKILL)
        process.wait()
        with opened(tmp_path / "xdg" / "soulstone") as registry:
            record = registry.get(f"big{attempt}")
            if record is not None:
                blobs = registry.blob_paths(record.name)
                for name, sha in record.files.items():
                    assert hashlib.sha256(Path(blobs[name]).read_bytes()).hexdigest() == sha
            outcomes.append(record is not None)
    print("kept adapters per attempt:", outcomes)
    assert len(outcomes) == 6


@pytest.mark.parametrize(
    ("name", "words"),
    [
        (None, "needs a name"),
        ("", "needs a name"),
        ("../../x", "not an adapter name"),
        ("a/b", "not an adapter name"),
        ("a..b", "not an adapter name"),
        (".hidden", "not an adapter name"),
        ("-x", "not an adapter name"),
        ("x" * 65, "not an adapter name"),
        ("story\n", "not an adapter name"),
        ("tiny", "is a model [tiny] serves"),
        ("taken", "exists"),
    ],
)
def test_names_must_be_safe_and_free(codex: Codex, name: object, words: str) -> None:
    with pytest.raises(AdapterRefused, match=re.escape(words)):
        check_name(name, codex, {"taken"})


def test_good_names_pass(codex: Codex) -> None:
    for name in ("story-a", "v1.2_x", "A", "x" * 64):
        assert check_name(name, codex, {"taken"}) == name


@pytest.mark.parametrize("linked", ["adapter_config.json", "adapter_model.safetensors"])
def test_a_symlinked_adapter_file_is_refused(tmp_path: Path, codex: Codex, linked: str) -> None:
    folder = write_adapter(tmp_path / "a")
    elsewhere = tmp_path / "elsewhere"
    (folder / linked).rename(elsewhere)
    (folder / linked).symlink_to(elsewhere)
    with pytest.raises(AdapterRefused, match="a symbolic link") as caught:
        inspect_adapter("a", folder, tiny(codex))
    assert str(folder / linked) in str(caught.value)


def test_only_regular_files_are_ingested(tmp_path: Path, codex: Codex) -> None:
    folder = write_adapter(tmp_path / "a")
    secret = tmp_path / "secret"
    secret.write_text("not for the adapter")
    (folder / "notes.txt").symlink_to(secret)
    (folder / "checkpoint").mkdir()
    (folder / "checkpoint" / "inner.bin").write_bytes(b"x")
    (folder / ".partial.tmp").write_bytes(b"x")
    (folder / "README.md").write_text("kept")
    os.mkfifo(folder / "pipe")
    info = inspect_adapter("a", folder, tiny(codex))
    assert set(info.files) == {"adapter_config.json", "adapter_model.safetensors", "README.md"}


def test_a_file_changed_after_inspection_is_not_stored(tmp_path: Path, codex: Codex) -> None:
    folder = write_adapter(tmp_path / "a")
    info = inspect_adapter("a", folder, tiny(codex))
    (folder / "adapter_config.json").write_text('{"r": 4, "swapped": true}')
    with opened(tmp_path / "data") as registry:
        with pytest.raises(RegistryError, match=r"adapter_config\.json: changed"):
            registry.add(info, folder)
        assert registry.get("a") is None


def test_fresh_folders_and_warm_copies_are_private_whatever_the_umask(
    tmp_path: Path, codex: Codex
) -> None:
    folder = write_adapter(tmp_path / "a")
    (folder / "adapter_model.safetensors").chmod(0o600)
    info = inspect_adapter("a", folder, tiny(codex))
    cache_home, data = tmp_path / "xdg-cache" / "soulstone", tmp_path / "xdg-data" / "soulstone"
    previous = os.umask(0)
    try:
        with opened(data) as registry:
            record = registry.add(info, folder)
            warm = AdapterCache(cache_home / "adapters").warm(record, registry.blob_paths("a"))
    finally:
        os.umask(previous)
    for made in (tmp_path / "xdg-cache", cache_home, cache_home / "adapters", warm,
                 tmp_path / "xdg-data", data):  # fmt: skip
        assert stat.S_IMODE(made.stat().st_mode) == 0o700, made
    for copy in warm.iterdir():
        assert stat.S_IMODE(copy.stat().st_mode) == 0o600, copy
    assert audit_caches([cache_home]) == []


def test_a_warm_copy_from_before_is_made_private(tmp_path: Path, codex: Codex) -> None:
    folder = write_adapter(tmp_path / "a")
    info = inspect_adapter("a", folder, tiny(codex))
    cache = AdapterCache(tmp_path / "cache")
    with opened(tmp_path / "data") as registry:
        record = registry.add(info, folder)
        warm = cache.warm(record, registry.blob_paths("a"))
        (warm / "adapter_model.safetensors").chmod(0o644)
        warm.chmod(0o755)
        assert cache.warm(record, registry.blob_paths("a")) == warm
    assert stat.S_IMODE(warm.stat().st_mode) == 0o700
    assert stat.S_IMODE((warm / "adapter_model.safetensors").stat().st_mode) == 0o600
