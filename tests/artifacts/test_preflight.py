"""The checks before a start (SPEC C10), on caches huggingface_hub wrote from a local fake Hub."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from conftest import MakeSupervisor
from helpers import FAKE_ENGINE, free_port, load, write
from hub_server import FakeHub, fill_cache
from soulstone.artifacts.cache import hub_cache, scan_repo
from soulstone.artifacts.preflight import Preflight
from soulstone.codex.models import Soulstone
from soulstone.errors import ModelError
from soulstone.runtimes.state import read_json
from soulstone.supervisor.plan import Target
from soulstone.supervisor.supervisor import ManifestError

REPO = "soulstone-test/tiny"
V1 = {"config.json": b'{"model_type": "llama"}', "tokenizer.json": b'{"v": 1}',
      "model.safetensors": b"\x01" * 4096}  # fmt: skip
V2 = {**V1, "model.safetensors": b"\x02" * 4096}


def stone(tmp_path: Path, lines: str) -> Soulstone:
    model = ["--model", "{model_path}"] if "model" in lines else []
    port = free_port()
    command = [sys.executable, str(FAKE_ENGINE), *model, "--port", str(port)]
    text = (f"[tiny]\nport = {port}\nexec = {json.dumps(command)}\n{lines}\n"
            "health = { start_timeout = 30, interval = 0.05 }\n")  # fmt: skip
    [soulstone] = load(write(tmp_path / "codex", {"a.toml": text})).soulstones
    return soulstone


def refused(preflight: Preflight, soulstone: Soulstone) -> str:
    with pytest.raises(ModelError) as caught:
        preflight(soulstone)
    return str(caught.value)


def test_the_cache_is_where_huggingface_hub_looks() -> None:
    assert hub_cache({"HOME": "/h"}) == Path("/h/.cache/huggingface/hub")
    assert hub_cache({"HOME": "/h", "XDG_CACHE_HOME": "/x"}) == Path("/x/huggingface/hub")
    assert hub_cache({"HOME": "/h", "HF_HOME": "/hf", "XDG_CACHE_HOME": "/x"}) == Path("/hf/hub")
    assert hub_cache({"HOME": "/h", "HF_HOME": "/hf", "HF_HUB_CACHE": "~/c"}) == Path("/h/c")


def test_the_engine_gets_the_snapshot_main_points_at(tmp_path: Path, fake_hub: FakeHub) -> None:
    commit = fake_hub.publish(REPO, V1)
    snapshot = fill_cache(tmp_path / "hub", fake_hub, REPO)
    soulstone = stone(tmp_path, f'model = "{REPO}"')
    ready = Preflight(tmp_path / "hub")(soulstone)
    assert ready.model_path == str(snapshot) and snapshot.name == commit
    plain = stone(tmp_path, "")
    assert Preflight(tmp_path / "hub")(plain) is plain  # no model: nothing to check


def test_a_missing_model_says_what_to_run(tmp_path: Path) -> None:
    message = refused(Preflight(tmp_path / "hub"), stone(tmp_path, f'model = "{REPO}"'))
    assert f"model {REPO} is not in the Hugging Face cache ({tmp_path / 'hub'})" in message
    assert f"soulstone models pull {REPO}" in message


def test_a_pinned_revision_that_is_not_cached_blocks_the_start(
    tmp_path: Path, fake_hub: FakeHub
) -> None:
    old = fake_hub.publish(REPO, V1)
    new = fake_hub.publish(REPO, V2)
    fill_cache(tmp_path / "hub", fake_hub, REPO)  # main: the new commit only
    message = refused(Preflight(tmp_path / "hub"),
                      stone(tmp_path, f'model = "{REPO}"\nrevision = "{old}"'))  # fmt: skip
    assert f"pinned to revision {old}, which is not in the cache" in message
    assert f"only {new[:12]} (main)" in message
    assert "does not start another snapshot" in message


def test_a_pinned_tag_names_its_commit(tmp_path: Path, fake_hub: FakeHub) -> None:
    tagged = fake_hub.publish(REPO, V1, "v1")
    fake_hub.publish(REPO, V2)
    fill_cache(tmp_path / "hub", fake_hub, REPO, revision="v1")
    fill_cache(tmp_path / "hub", fake_hub, REPO)
    ready = Preflight(tmp_path / "hub")(stone(tmp_path, f'model = "{REPO}"\nrevision = "v1"'))
    assert ready.model_path is not None and Path(ready.model_path).name == tagged
    message = refused(Preflight(tmp_path / "hub"),
                      stone(tmp_path, f'model = "{REPO}"\nrevision = "v2"'))  # fmt: skip
    assert "revision 'v2' is not in the cache" in message


def test_a_ref_that_moved_to_a_partial_snapshot_is_no_silent_downgrade(
    tmp_path: Path, fake_hub: FakeHub
) -> None:
    fake_hub.publish(REPO, V1)
    fill_cache(tmp_path / "hub", fake_hub, REPO)
    moved = fake_hub.publish(REPO, V2)
    fill_cache(tmp_path / "hub", fake_hub, REPO, allow=["config.json"])  # an interrupted pull
    facts = scan_repo(tmp_path / "hub", REPO)
    assert facts is not None and facts.refs["main"] == moved and len(facts.snapshots) == 2
    message = refused(Preflight(tmp_path / "hub"), stone(tmp_path, f'model = "{REPO}"'))
    assert f"the snapshot {moved[:12]} (refs/main points at it) lacks 2 listed file(s)" in message
    assert "model.safetensors, tokenizer.json" in message


def test_a_blob_of_the_wrong_size_blocks_the_start(tmp_path: Path, fake_hub: FakeHub) -> None:
    fake_hub.publish(REPO, V1)
    snapshot = fill_cache(tmp_path / "hub", fake_hub, REPO)
    blob = (snapshot / "model.safetensors").resolve()
    os.truncate(blob, 100)
    message = refused(Preflight(tmp_path / "hub"), stone(tmp_path, f'model = "{REPO}"'))
    assert "model.safetensors" in message and "has 100 bytes" in message
    assert "listing says 4096" in message and str(blob) in message


def test_a_missing_blob_is_reported_as_damage(tmp_path: Path, fake_hub: FakeHub) -> None:
    fake_hub.publish(REPO, V1)
    snapshot = fill_cache(tmp_path / "hub", fake_hub, REPO)
    (snapshot / "config.json").resolve().unlink()
    message = refused(Preflight(tmp_path / "hub"), stone(tmp_path, f'model = "{REPO}"'))
    assert f"the Hugging Face cache entry of {REPO} is damaged" in message
    assert "Blob missing" in message and f"soulstone models pull {REPO}" in message


def test_strict_mode_wants_a_private_cache(tmp_path: Path, fake_hub: FakeHub) -> None:
    fake_hub.publish(REPO, V1)
    fill_cache(tmp_path / "hub", fake_hub, REPO)
    soulstone = stone(tmp_path, f'model = "{REPO}"')
    (tmp_path / "hub").chmod(0o755)
    Preflight(tmp_path / "hub")(soulstone)  # not strict: fine
    message = refused(Preflight(tmp_path / "hub", strict=True), soulstone)
    assert "mode 0755" in message and f"chmod 700 {tmp_path / 'hub'}" in message
    (tmp_path / "hub").chmod(0o700)
    Preflight(tmp_path / "hub", strict=True)(soulstone)


async def test_the_supervisor_starts_the_engine_on_the_snapshot(
    tmp_path: Path, fake_hub: FakeHub, make_supervisor: MakeSupervisor
) -> None:
    fake_hub.publish(REPO, V1)
    snapshot = fill_cache(tmp_path / "hub", fake_hub, REPO)
    soulstone = stone(tmp_path, f'model = "{REPO}"')
    supervisor = make_supervisor(load(tmp_path / "codex"), preflight=Preflight(tmp_path / "hub"))
    await supervisor.manifest(Target("soulstone", "tiny"))
    record = read_json(supervisor.state.record("tiny")) or {}
    assert record["argv"][:4] == [sys.executable, str(FAKE_ENGINE), "--model", str(snapshot)]
    assert (await supervisor.status(soulstone)).state == "running"


async def test_a_failed_check_is_a_failure_and_stops_nothing(
    tmp_path: Path, fake_hub: FakeHub, make_supervisor: MakeSupervisor
) -> None:
    old = fake_hub.publish(REPO, V1)
    fake_hub.publish(REPO, V2)
    fill_cache(tmp_path / "hub", fake_hub, REPO)
    port = free_port()
    command = [sys.executable, str(FAKE_ENGINE), "--port", str(port)]
    other = (f"[other]\nport = {port}\nexec = {json.dumps(command)}\n"
             "health = { start_timeout = 30, interval = 0.05 }\n")  # fmt: skip
    stone(tmp_path, f'model = "{REPO}"\nrevision = "{old}"')
    write(tmp_path / "codex", {"b.toml": other})
    codex = load(tmp_path / "codex")
    supervisor = make_supervisor(codex, preflight=Preflight(tmp_path / "hub"))
    await supervisor.manifest(Target("soulstone", "other"))
    with pytest.raises(ManifestError) as caught:
        await supervisor.manifest(Target("soulstone", "tiny"))  # solitary: would stop `other`
    [failure] = caught.value.failures
    assert failure.soulstone == "tiny" and f"pinned to revision {old}" in failure.reason
    assert str(caught.value).startswith(f"tiny: model {REPO} is pinned")
    other_stone = codex.get("other")
    assert other_stone is not None
    assert (await supervisor.status(other_stone)).state == "running"
