"""`models verify`: every blob hashed against the hash its name promises."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from hub_server import FakeHub, fill_cache, git_blob_id
from soulstone.artifacts.verify import blob_hash, hash_kind, verify_model
from soulstone.errors import ModelError

REPO = "soulstone-test/tiny"
FILES = {"config.json": b'{"model_type": "llama"}', "model.safetensors": b"\x01" * 70_000}


def test_blob_names_say_which_hash(tmp_path: Path) -> None:
    blob = tmp_path / "blob"
    blob.write_bytes(b"weights")
    assert hash_kind("a" * 64) == "sha256" and hash_kind("b" * 40) == "git-sha1"
    assert hash_kind("etag-from-a-mirror") == "unchecked"
    assert blob_hash(blob, "sha256") == hashlib.sha256(b"weights").hexdigest()
    assert blob_hash(blob, "git-sha1") == git_blob_id(b"weights")
    assert blob_hash(blob, "unchecked") is None


def test_a_clean_snapshot_verifies(tmp_path: Path, fake_hub: FakeHub) -> None:
    commit = fake_hub.publish(REPO, FILES)
    fill_cache(tmp_path / "hub", fake_hub, REPO)
    read: list[int] = []
    verdict = verify_model(tmp_path / "hub", REPO, None, read.append)
    assert verdict.ok and verdict.commit == commit and verdict.messages() == []
    kinds = {(b.file, b.kind) for b in verdict.blobs}
    assert kinds == {("config.json", "git-sha1"), ("model.safetensors", "sha256")}
    assert sum(read) == sum(len(data) for data in FILES.values())


def test_a_corrupted_blob_is_found(tmp_path: Path, fake_hub: FakeHub) -> None:
    fake_hub.publish(REPO, FILES)
    snapshot = fill_cache(tmp_path / "hub", fake_hub, REPO)
    blob = (snapshot / "model.safetensors").resolve()
    with blob.open("r+b") as handle:  # same size: only the full hash can tell
        handle.seek(1234)
        handle.write(b"\xff")
    verdict = verify_model(tmp_path / "hub", REPO, None)
    assert not verdict.ok and verdict.problem is None
    [bad] = [b for b in verdict.blobs if not b.ok]
    assert bad.file == "model.safetensors" and bad.actual != blob.name
    [message] = verdict.messages()
    assert "model.safetensors is corrupt" in message and f"delete {blob}" in message
    assert verdict.summary()["ok"] is False


def test_verify_needs_the_model_in_the_cache(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="is not in the Hugging Face cache"):
        verify_model(tmp_path / "hub", REPO, None)
