"""Real llama-server engines swapped by the supervisor, over TCP and Unix sockets."""

from __future__ import annotations

import json
from pathlib import Path

import httpx2
import openai
import pytest

from conftest import MakeSupervisor
from helpers import free_port, load, write
from real_engines import llama_server, tiny_gguf
from soulstone.codex.models import Soulstone
from soulstone.runtimes import procfs
from soulstone.runtimes.state import read_json
from soulstone.supervisor.plan import Target
from soulstone.supervisor.supervisor import Supervisor

pytestmark = pytest.mark.engine


def codex_text(use_sockets: bool, run_dir: Path) -> str:
    binary, model = llama_server(), tiny_gguf()
    tables = []
    for table, group in (("g1.a", None), ("g1.b", None), ("g2.c", None), ("solo", None)):
        del group
        name = table.replace(".", "-")
        address = (
            f'socket = "{run_dir / (name + ".sock")}"' if use_sockets else f"port = {free_port()}"
        )
        exec_ = [str(binary), "-m", str(model), "-c", "256", "-t", "1", "--no-warmup"]
        tables.append(
            f'[{table}]\n{address}\nexec = {json.dumps(exec_)}\nmodels = ["{name}"]\n'
            "health = { start_timeout = 60, interval = 0.1 }\n"
        )
    return "\n".join(tables)


def client(soulstone: Soulstone) -> openai.OpenAI:
    if soulstone.socket is not None:
        transport = httpx2.HTTPTransport(uds=soulstone.socket)
        return openai.OpenAI(
            base_url="http://localhost/v1", api_key="none",
            http_client=httpx2.Client(transport=transport),
        )  # fmt: skip
    return openai.OpenAI(base_url=f"http://127.0.0.1:{soulstone.port}/v1", api_key="none")


def answers(soulstone: Soulstone) -> None:
    reply = client(soulstone).chat.completions.create(
        model=soulstone.models[0], messages=[{"role": "user", "content": "hello"}], max_tokens=4
    )
    assert reply.choices[0].message.role == "assistant"
    assert reply.usage is not None and reply.usage.completion_tokens >= 1


def group_of(supervisor: Supervisor, soulstone_id: str) -> int:
    kept = read_json(supervisor.state.keeper(soulstone_id))
    assert kept is not None
    return int(kept["pgid"])


@pytest.mark.parametrize("use_sockets", [False, True], ids=["tcp", "unix-socket"])
async def test_swaps_between_groups_and_solitary(
    tmp_path: Path, make_supervisor: MakeSupervisor, use_sockets: bool
) -> None:
    codex = load(write(tmp_path / "codex", {"c.toml": codex_text(use_sockets, tmp_path / "r")}))
    supervisor = make_supervisor(codex)
    by_id = {s.id: s for s in codex.soulstones}

    await supervisor.manifest(Target("group", "g1"))  # two members run together
    states = {s.id: s.state for s in await supervisor.statuses()}
    assert states == {"g1.a": "running", "g1.b": "running", "g2.c": "stopped", "solo": "stopped"}
    answers(by_id["g1.a"])
    answers(by_id["g1.b"])
    groups = [group_of(supervisor, "g1.a"), group_of(supervisor, "g1.b")]

    await supervisor.manifest(Target("soulstone", "g2.c"))  # conflicting group: g1 goes
    assert all(procfs.group_members(pgid) == [] for pgid in groups)
    answers(by_id["g2.c"])
    c_group = group_of(supervisor, "g2.c")

    await supervisor.manifest(Target("soulstone", "solo"))  # solitary: everything else goes
    assert procfs.group_members(c_group) == []
    answers(by_id["solo"])
    states = {s.id: s.state for s in await supervisor.statuses()}
    assert states == {"g1.a": "stopped", "g1.b": "stopped", "g2.c": "stopped", "solo": "running"}

    solo_group = group_of(supervisor, "solo")
    await supervisor.down()
    assert procfs.group_members(solo_group) == []
