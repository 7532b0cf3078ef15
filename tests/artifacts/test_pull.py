"""Pulls from a local fake Hub: plan, room (model + 20 %), download, refs, repair, no network."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers import free_port
from hub_server import FakeHub, fill_cache
from soulstone.artifacts.cache import scan_repo
from soulstone.artifacts.checks import needed_bytes
from soulstone.artifacts.pull import free_bytes, plan_pull, pull
from soulstone.errors import ModelError

REPO = "soulstone-test/tiny"
FILES = {"config.json": b'{"model_type": "llama"}', "model.safetensors": b"\x01" * 300_000,
         "tokenizer.json": b"{}"}  # fmt: skip
SIZE = sum(len(data) for data in FILES.values())


def test_a_pull_downloads_what_is_missing_with_progress(tmp_path: Path, fake_hub: FakeHub) -> None:
    commit = fake_hub.publish(REPO, FILES)
    cache = tmp_path / "hub"
    plan = plan_pull(cache, REPO, None, env={}, endpoint=fake_hub.url)
    assert (plan.commit, plan.revision, plan.download_bytes) == (commit, "main", SIZE)
    assert not cache.exists()  # planning writes nothing
    counted: list[int] = []
    folder = pull(plan, cache, counted.append)
    assert folder.name == commit and sum(counted) == SIZE
    assert (cache.stat().st_mode & 0o777) == 0o700
    facts = scan_repo(cache, REPO)
    assert facts is not None and facts.refs == {"main": commit}
    snapshot = facts.snapshots[commit]
    assert snapshot.listed and not snapshot.missing  # huggingface_hub wrote its tree listing
    assert plan_pull(cache, REPO, None, env={}, endpoint=fake_hub.url).to_fetch == ()


def test_a_damaged_file_is_fetched_again(tmp_path: Path, fake_hub: FakeHub) -> None:
    fake_hub.publish(REPO, FILES)
    snapshot = fill_cache(tmp_path / "hub", fake_hub, REPO)
    os.truncate((snapshot / "model.safetensors").resolve(), 10)
    plan = plan_pull(tmp_path / "hub", REPO, None, env={}, endpoint=fake_hub.url)
    assert [(f.name, f.state) for f in plan.to_fetch] == [("model.safetensors", "damaged")]
    pull(plan, tmp_path / "hub")
    assert (snapshot / "model.safetensors").read_bytes() == FILES["model.safetensors"]


def test_a_pull_that_does_not_fit_is_refused_before_any_download(
    tmp_path: Path, fake_hub: FakeHub
) -> None:
    fake_hub.publish(REPO, FILES)
    cache = tmp_path / "hub"
    plan = plan_pull(cache, REPO, None, env={}, endpoint=fake_hub.url)
    before = len(fake_hub.downloads())
    with pytest.raises(ModelError) as caught:
        pull(plan, cache, free_space=lambda _path: needed_bytes(SIZE) - 1)
    message = str(caught.value)
    assert f"not enough disk space to pull {REPO} into {cache}" in message
    assert "its size plus 20 %" in message
    assert len(fake_hub.downloads()) == before and not cache.exists()
    pull(plan, cache, free_space=lambda _path: needed_bytes(SIZE))  # exactly enough: fits


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A 256 KiB tmpfs mounted for the test (root only), unmounted afterwards."""
    folder = tmp_path / "tiny-disk"
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(folder)],
                             capture_output=True, text=True, check=False)  # fmt: skip
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.strip()}): the faked "
                    "free-space probe above covers the refusal")  # fmt: skip
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=True)


def test_a_tiny_filesystem_refuses_the_pull(
    tmp_path: Path, fake_hub: FakeHub, tiny_disk: Path
) -> None:
    fake_hub.publish(REPO, FILES)  # 300 KB: more than the disk holds
    cache = tiny_disk / "hub"
    assert free_bytes(cache) <= 256 * 1024
    plan = plan_pull(cache, REPO, None, env={}, endpoint=fake_hub.url)
    with pytest.raises(ModelError, match="not enough disk space"):
        pull(plan, cache)
    assert fake_hub.downloads() == [] and not cache.exists()


def test_offline_mode_and_no_network_are_said_plainly(tmp_path: Path) -> None:
    with pytest.raises(ModelError) as caught:
        plan_pull(tmp_path, REPO, None, env={"HF_HUB_OFFLINE": "1"})
    assert "offline mode is on (HF_HUB_OFFLINE)" in str(caught.value)
    nobody = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(ModelError) as caught:
        plan_pull(tmp_path, REPO, None, env={}, endpoint=nobody)
    message = str(caught.value)
    assert message.startswith(f"no network: cannot reach the Hugging Face Hub at {nobody}")


def test_unknown_models_and_revisions(tmp_path: Path, fake_hub: FakeHub) -> None:
    fake_hub.publish(REPO, FILES)
    with pytest.raises(ModelError, match="has no model soulstone-test/other"):
        plan_pull(tmp_path, "soulstone-test/other", None, env={}, endpoint=fake_hub.url)
    with pytest.raises(ModelError, match="has no revision 'v9' of"):
        plan_pull(tmp_path, REPO, "v9", env={}, endpoint=fake_hub.url)
