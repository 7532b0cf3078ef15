"""A real vLLM CPU engine started through soulstone on a Unix socket (--uds)."""

from __future__ import annotations

from pathlib import Path

import httpx2
import openai
import pytest

from conftest import MakeSupervisor
from helpers import load, write
from real_engines import vllm_table
from soulstone.runtimes import procfs
from soulstone.runtimes.state import read_json
from soulstone.supervisor.plan import Target

pytestmark = pytest.mark.engine


async def test_vllm_on_a_unix_socket(
    tmp_path: Path, make_supervisor: MakeSupervisor, short_tmp: Path
) -> None:
    socket = tmp_path / "run" / "vllm.sock"
    text = vllm_table("tiny-vllm", "tiny-vllm", socket, short_tmp)
    codex = load(write(tmp_path / "codex", {"v.toml": text}))
    [soulstone] = codex.soulstones
    assert soulstone.engine == "vllm"
    supervisor = make_supervisor(codex, grace=10.0)
    await supervisor.manifest(Target("soulstone", "tiny-vllm"))
    status = await supervisor.status(soulstone)
    assert (status.state, status.health) == ("running", "healthy")
    argv = (read_json(supervisor.state.record("tiny-vllm")) or {})["argv"]
    assert argv[-2:] == ["--uds", str(socket)]  # soulstone put vLLM on the socket

    http = httpx2.Client(transport=httpx2.HTTPTransport(uds=str(socket)))
    client = openai.OpenAI(base_url="http://localhost/v1", api_key="none", http_client=http)
    reply = client.chat.completions.create(
        model="tiny-vllm", messages=[{"role": "user", "content": "hello"}], max_tokens=5
    )
    assert reply.model == "tiny-vllm"
    assert reply.usage is not None and reply.usage.completion_tokens >= 1

    kept = read_json(supervisor.state.keeper("tiny-vllm")) or {}
    await supervisor.down()
    assert procfs.group_members(int(kept["pgid"])) == []
    assert not procfs.alive(kept["keeper_pid"])
