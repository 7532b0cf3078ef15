"""Real vLLM CPU on a model named `org/name`, found in a Hugging Face cache the test filled."""

from __future__ import annotations

import json
from pathlib import Path

import httpx2
import openai
import pytest

from conftest import MakeSupervisor
from helpers import load, write
from hub_server import FakeHub, fill_cache, model_files
from real_engines import tiny_hf_model, vllm_python
from soulstone.artifacts.preflight import Preflight
from soulstone.runtimes import procfs
from soulstone.runtimes.state import read_json
from soulstone.supervisor.plan import Target
from soulstone.supervisor.supervisor import ManifestError

pytestmark = pytest.mark.engine

REPO = "soulstone-test/tiny-llama"


def hub_table(socket: Path, scratch: Path, lines: str) -> str:
    """The tiny vLLM engine with no model in exec: soulstone hands it the snapshot."""
    command = [str(vllm_python()), "-m", "vllm.entrypoints.openai.api_server", "--max-model-len",
               "512", "--dtype", "float32", "--kv-cache-memory-bytes", "64M"]  # fmt: skip
    env = f'VLLM_HOST_IP = "127.0.0.1", VLLM_ENABLE_V1_MULTIPROCESSING = "0", TMPDIR = "{scratch}"'
    return (f'[tiny-hub]\nexec = {json.dumps(command)}\nsocket = "{socket}"\n'
            f'model = "{REPO}"\nmodels = ["tiny-hub"]\n{lines}\nenv = {{ {env} }}\n'
            "health = { start_timeout = 300, interval = 1 }\n")  # fmt: skip


def environ_of(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode().split("=", 1) for item in raw if b"=" in item)


async def test_vllm_starts_on_a_hub_model_offline(
    tmp_path: Path, make_supervisor: MakeSupervisor, short_tmp: Path, fake_hub: FakeHub
) -> None:
    commit = fake_hub.publish(REPO, model_files(tiny_hf_model()))
    snapshot = fill_cache(tmp_path / "hub", fake_hub, REPO)
    socket = tmp_path / "run" / "vllm.sock"
    codex = load(write(tmp_path / "codex", {"v.toml": hub_table(socket, short_tmp, "")}))
    [soulstone] = codex.soulstones
    supervisor = make_supervisor(codex, grace=10.0, preflight=Preflight(tmp_path / "hub"))
    await supervisor.manifest(Target("soulstone", "tiny-hub"))
    status = await supervisor.status(soulstone)
    assert (status.state, status.health) == ("running", "healthy")
    argv = (read_json(supervisor.state.record("tiny-hub")) or {})["argv"]
    assert argv[-4:] == ["--model", str(snapshot), "--served-model-name", "tiny-hub"]
    assert snapshot.name == commit
    assert status.pid is not None and environ_of(status.pid)["HF_HUB_OFFLINE"] == "1"

    http = httpx2.Client(transport=httpx2.HTTPTransport(uds=str(socket)))
    client = openai.OpenAI(base_url="http://localhost/v1", api_key="none", http_client=http)
    reply = client.chat.completions.create(
        model="tiny-hub", messages=[{"role": "user", "content": "hello"}], max_tokens=5
    )
    assert reply.model == "tiny-hub"
    assert reply.usage is not None and reply.usage.completion_tokens >= 1

    kept = read_json(supervisor.state.keeper("tiny-hub")) or {}
    await supervisor.down()
    assert procfs.group_members(int(kept["pgid"])) == []


async def test_a_pin_that_does_not_match_blocks_vllm(
    tmp_path: Path, make_supervisor: MakeSupervisor, short_tmp: Path, fake_hub: FakeHub
) -> None:
    files = model_files(tiny_hf_model())
    old = fake_hub.publish(REPO, files)
    fake_hub.publish(REPO, {**files, "generation_config.json": b"{}"})  # main moves on
    fill_cache(tmp_path / "hub", fake_hub, REPO)
    socket = tmp_path / "run" / "vllm.sock"
    text = hub_table(socket, short_tmp, f'revision = "{old}"')
    codex = load(write(tmp_path / "codex", {"v.toml": text}))
    supervisor = make_supervisor(codex, preflight=Preflight(tmp_path / "hub"))
    with pytest.raises(ManifestError) as caught:
        await supervisor.manifest(Target("soulstone", "tiny-hub"))
    message = str(caught.value)
    assert message.startswith(f"tiny-hub: model {REPO} is pinned to revision {old}")
    assert f"soulstone models pull {REPO}" in message
    assert supervisor.state.record("tiny-hub").exists() is False  # nothing was started
