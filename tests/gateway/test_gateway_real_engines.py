"""The official openai client through the gateway to real llama-server engines."""

from __future__ import annotations

from pathlib import Path

import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from gateway_harness import StartGateway
from helpers import free_port, write
from real_engines import llama_table

pytestmark = pytest.mark.engine


def exercise(client: openai.OpenAI, model: str) -> None:
    messages: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hello"}]
    reply = client.chat.completions.create(model=model, messages=messages, max_tokens=4)
    assert reply.choices[0].message.role == "assistant"
    assert reply.usage is not None and reply.usage.completion_tokens >= 1
    chunks = list(client.chat.completions.create(
        model=model, messages=messages, max_tokens=4, stream=True,
    ))  # fmt: skip
    assert any(c.choices and c.choices[0].finish_reason for c in chunks)
    completion = client.completions.create(model=model, prompt="Once upon", max_tokens=3)
    assert completion.choices[0].text is not None
    assert completion.usage is not None and completion.usage.completion_tokens >= 1


def test_openai_client_against_real_engines_over_socket_and_tcp(
    tmp_path: Path, start_gateway: StartGateway
) -> None:
    codex = write(tmp_path / "codex", {"llama.toml": "\n".join([
        llama_table("north", "tiny-north", "n", f"port = {free_port()}"),
        llama_table("south", "tiny-south", "s", f'socket = "{tmp_path / "south.sock"}"'),
    ])})  # fmt: skip
    gateway = start_gateway(codex)
    for client in (gateway.uds_client(), gateway.tcp_client()):
        listed = {m.id for m in client.models.list().data}
        assert listed == {"tiny-north", "tiny-south"}
        exercise(client, "tiny-north")
        exercise(client, "tiny-south")  # a conflicting group: the engines swap
    states = {s["id"]: s["state"] for s in gateway.http().get("/admin/status").json()["soulstones"]}
    assert states == {"north": "stopped", "south": "running"}
    metrics = gateway.http().get("/metrics").text
    assert "soulstone_swaps_total 3.0" in metrics
