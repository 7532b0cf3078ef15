"""Token budgets counted by a real engine's tokenizer (llama-server's chat template + tokenize)."""

from __future__ import annotations

import json
from pathlib import Path

import httpx2
import pytest

from gateway_harness import StartGateway
from helpers import free_port, write
from real_engines import llama_server, tiny_gguf, vllm_table

pytestmark = pytest.mark.engine

MESSAGES = [{"role": "user", "content": "How many tokens does this prompt take, exactly?"}]


def test_a_prompt_that_fits_by_one_token_passes_and_one_over_fails(
    tmp_path: Path, start_gateway: StartGateway
) -> None:
    port = free_port()
    command = [str(llama_server()), "-m", str(tiny_gguf()), "-c", "512", "-t", "1", "--no-warmup"]
    codex = write(tmp_path / "codex", {"l.toml": (
        f'[tiny]\nport = {port}\nexec = {json.dumps(command)}\n'
        "health = { start_timeout = 60, interval = 0.1 }\n"
    )})  # fmt: skip
    clients = {"gateway": {"max_context_tokens": 100, "max_output_tokens": 80}, "clients": {}}
    gateway = start_gateway(codex, clients=clients)
    http = gateway.http()
    http.post("/admin/up", json={"name": "tiny"})
    engine = httpx2.Client(base_url=f"http://127.0.0.1:{port}")
    prompt = engine.post("/apply-template", json={"messages": MESSAGES}).json()["prompt"]
    tokens = len(engine.post("/tokenize", json={"content": prompt, "add_special": True})
                 .json()["tokens"])  # fmt: skip
    assert 20 < tokens < 60
    headers = {"X-Request-ID": "budget-1", "X-Conveyance-Session-ID": "s-1"}

    def chat(max_tokens: int, **more: str) -> httpx2.Response:
        body = {"model": "tiny", "messages": MESSAGES, "max_tokens": max_tokens}
        return http.post("/v1/chat/completions", headers={**headers, **more}, json=body)

    fits = chat(100 - tokens)
    assert fits.status_code == 200, fits.text
    assert fits.json()["usage"]["prompt_tokens"] == tokens  # the engine counts the same way

    over = chat(101 - tokens, **{"X-Soulstone-Errors": "flat"})  # SPEC C5's flat shape
    assert over.status_code == 400
    assert over.headers["X-Request-ID"] == "budget-1"
    assert over.headers["X-Conveyance-Session-ID"] == "s-1"
    body = over.json()
    assert set(body) == {"error", "message", "prompt_tokens", "max_tokens", "limit"}
    assert (body["error"], body["prompt_tokens"], body["max_tokens"], body["limit"]) == (
        "TOKEN_BUDGET_EXCEEDED", tokens, 101 - tokens, 100,
    )  # fmt: skip
    error = chat(101 - tokens).json()["error"]  # OpenAI's shape by default, same fields
    assert (error["code"], error["type"], error["prompt_tokens"], error["limit"]) == (
        "TOKEN_BUDGET_EXCEEDED", "invalid_request_error", tokens, 100,
    )  # fmt: skip

    too_long = chat(81)
    assert too_long.status_code == 400 and too_long.json()["error"]["limit"] == 80

    filled = http.post("/v1/chat/completions", json={"model": "tiny", "messages": MESSAGES})
    assert filled.status_code == 200  # a missing max_tokens is set within the budget
    assert filled.json()["usage"]["completion_tokens"] <= 100 - tokens


def test_vllm_counts_chat_prompts_with_its_template(
    tmp_path: Path, start_gateway: StartGateway, short_tmp: Path
) -> None:
    socket = tmp_path / "v.sock"
    codex = write(tmp_path / "codex", {"v.toml": vllm_table("tiny-vllm", "tiny-vllm", socket,
                                                           short_tmp)})  # fmt: skip
    budget = {"max_context_tokens": 100, "max_output_tokens": 80}
    gateway = start_gateway(codex, clients={"gateway": budget, "clients": {}})
    http = gateway.http()
    assert http.post("/admin/up", json={"name": "tiny-vllm"}).status_code == 200
    engine = httpx2.Client(transport=httpx2.HTTPTransport(uds=str(socket)),
                           base_url="http://localhost")  # fmt: skip
    tokens = engine.post("/tokenize", json={"model": "tiny-vllm", "messages": MESSAGES}).json()
    count = tokens["count"]
    assert 5 < count < 90

    def chat(max_tokens: int) -> httpx2.Response:
        body = {"model": "tiny-vllm", "messages": MESSAGES, "max_tokens": max_tokens}
        return http.post("/v1/chat/completions", json=body)

    fits = chat(min(80, 100 - count))
    assert fits.status_code == 200, fits.text
    assert fits.json()["usage"]["prompt_tokens"] == count
    if 101 - count <= 80:
        over = chat(101 - count)
        assert over.status_code == 400
        assert (
            over.json()["error"]["prompt_tokens"] == count and over.json()["error"]["limit"] == 100
        )
