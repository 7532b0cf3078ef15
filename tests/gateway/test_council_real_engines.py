"""Councils on real engines (SPEC C8): a vLLM CPU engine with two LoRA adapters and llama-server.

One gateway for the module, with two soulstones of one group (they run
together): `ring.vllm`, the tiny HF Llama on vLLM's CPU build with adapters
`story-a` and `story-b`, and `ring.llama`, the tiny GGUF on llama-server. The
base model and the two adapters are three personas of one base; a fourth
persona and the aggregator run on llama-server, so during a run vLLM serves
exactly the three same-base personas, and its own metrics show whether they
ran at once. The model routers' answers are forced by each engine's
structured output: a random tiny model cannot write `{"personas": [...]}` by
chance, so a router choice without a fallback shows the forcing worked.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2
import pytest
from openai.types.chat import ChatCompletionMessageParam

from gateway_harness import RunningGateway, gateway_starter, streamed_text
from helpers import free_port, write
from real_engines import llama_server, tiny_gguf, tiny_hf_model, vllm_table

pytestmark = pytest.mark.engine

MEMBERS = ("maat", "lilith", "isis")  # base, story-a, story-b: one base model on vLLM
QUESTION = "What is the weight of a promise?"

PERSONAS = """
[persona.maat]
model = "tiny"
system = "You are Ma'at."
temperature = 0
max_tokens = 48
[persona.lilith]
model = "story-a"
system = "You are Lilith."
temperature = 0
max_tokens = 48
[persona.isis]
model = "story-b"
system = "You are Isis."
temperature = 0
max_tokens = 48
[persona.thoth]
model = "tiny-gguf"
system = "You are Thoth."
temperature = 0
max_tokens = 24
[persona.scribe]
model = "tiny-gguf"
system = "You write the council's answer."
temperature = 0
max_tokens = 12
[persona.herald-v]
model = "tiny"
temperature = 0
max_tokens = 64
[persona.herald-l]
model = "tiny-gguf"
temperature = 0
max_tokens = 64
"""

COUNCILS = """
[council.ring]
personas = ["maat", "lilith", "isis", "thoth"]
aggregator = "scribe"
quorum = 4

[council.chosen-by-vllm]
personas = ["maat", "lilith", "thoth"]
aggregator = "scribe"
router = { kind = "model", persona = "herald-v", max_personas = 2 }

[council.chosen-by-llama]
personas = ["maat", "isis", "thoth"]
aggregator = "scribe"
router = { kind = "model", persona = "herald-l", max_personas = 2 }
"""

# xgrammar lets forced JSON hold any whitespace, and a random model writes it until
# max_tokens; without it the router answers the bare `{"personas":[...]}`.
TIGHT_JSON = {"backend": "xgrammar", "disable_any_whitespace": True}

# Before the adapters are registered, a council may only name served models.
FIRST = """
[persona.maat]
model = "tiny"
[council.warmup]
personas = ["maat"]
aggregator = "maat"
"""


def llama_table(table: str, model: str) -> str:
    """llama-server on the tiny GGUF, its chat template applied without Jinja.

    With Jinja, this llama-server primes a `json_schema` grammar with the
    template's generation prompt, which the tiny model's SPM tokenizer spells
    differently (" assistant"): every forced request fails with "Failed to
    initialize samplers". The built-in ChatML path has no such step.
    """
    command = [str(llama_server()), "-m", str(tiny_gguf()), "-c", "2048", "-t", "1",
               "--no-warmup", "--no-jinja"]  # fmt: skip
    return (f'[{table}]\nport = {free_port()}\nexec = {json.dumps(command)}\nmodels = ["{model}"]\n'
            "health = { start_timeout = 60, interval = 0.1 }\n")  # fmt: skip


@dataclass
class Ring:
    """The module's gateway and the vLLM engine's own socket."""

    gateway: RunningGateway
    vllm_socket: Path

    def engine(self) -> httpx2.Client:
        """A client of the vLLM engine itself, on its socket."""
        transport = httpx2.HTTPTransport(uds=str(self.vllm_socket))
        return httpx2.Client(transport=transport, base_url="http://localhost", timeout=30)


def sample(text: str, name: str) -> float:
    """The value of a vLLM metric (one engine: one series; 0 when absent)."""
    match = re.search(rf"^{re.escape(name)}(?:\{{[^}}]*\}})? (\S+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


@pytest.fixture(scope="module")
def ring(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Ring]:
    folder = tmp_path_factory.mktemp("council-real")
    scratch = Path(tempfile.mkdtemp(prefix="ss-", dir="/tmp"))  # vLLM's IPC paths stay short
    socket = scratch / "v.sock"
    vllm = vllm_table(
        "ring.vllm", "tiny", socket, scratch,
        extra_args=("--structured-outputs-config", json.dumps(TIGHT_JSON)),
        extra_lines=f'model_path = "{tiny_hf_model()}"\nmodels = ["tiny"]\n'
        "lora = { max_loras = 2, max_lora_rank = 16 }\n",
    )  # fmt: skip
    llama = llama_table("ring.llama", "tiny-gguf")
    codex = write(folder / "codex", {"ring.toml": f"{vllm}\n{llama}"})
    councils = write(folder / "councils", {"councils.toml": FIRST})
    try:
        with gateway_starter(folder) as start:
            gateway = start(codex, "--councils", str(councils))
            with gateway.http() as http:
                for name, source in (("story-a", "lora-a"), ("story-b", "lora-b")):
                    added = http.post("/admin/lora/add", json={
                        "name": name, "path": str(tiny_hf_model().parent / source),
                        "base": "ring.vllm"})  # fmt: skip
                    assert added.status_code == 200, added.text
                write(councils, {"councils.toml": PERSONAS + COUNCILS})
                reloaded = http.post("/admin/reload")
                assert reloaded.status_code == 200 and reloaded.json()["reloaded"], reloaded.text
                up = http.post("/admin/up", json={"name": "ring"})  # both engines, together
                assert up.status_code == 200, up.text
                for name in ("story-a", "story-b"):  # both hot before any run (max_loras = 2)
                    loaded = http.post("/admin/lora/load", json={"name": name})
                    assert loaded.status_code == 200, loaded.text
            yield Ring(gateway, socket)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def ask(gateway: RunningGateway, council: str) -> dict[str, Any]:
    body = {"messages": [{"role": "user", "content": QUESTION}]}
    with gateway.http() as http:
        answer = http.post(f"/v1/council/{council}", json=body)
    assert answer.status_code == 200, answer.text
    result: dict[str, Any] = answer.json()
    return result


def test_the_openai_client_asks_a_council_of_two_engines_and_three_same_base_personas(
    ring: Ring,
) -> None:
    client = ring.gateway.uds_client()
    assert "council/ring" in {m.id for m in client.models.list().data}
    messages: list[ChatCompletionMessageParam] = [{"role": "user", "content": QUESTION}]
    whole = client.chat.completions.create(model="council/ring", messages=messages)
    assert whole.model == "council/ring"
    assert whole.choices[0].message.content  # the aggregator's words, on llama-server
    assert whole.usage is not None and whole.usage.completion_tokens > 0
    streamed = client.chat.completions.create(
        model="council/ring", messages=messages, stream=True,
        stream_options={"include_usage": True},
    )  # fmt: skip
    text, usage = streamed_text(streamed)
    assert text
    assert usage is not None and usage.total_tokens > 0


def test_every_persona_answers_and_vllm_runs_the_three_same_base_personas_at_once(
    ring: Ring,
) -> None:
    with ring.engine() as engine:
        before = engine.get("/metrics").text
        with ring.gateway.http() as http:
            answer = http.post("/v1/council/ring", json={
                "messages": [{"role": "user", "content": QUESTION}]})  # fmt: skip
        after = engine.get("/metrics").text

    assert answer.status_code == 200, answer.text
    result = answer.json()
    [first] = result["rounds"]
    assert first["routed"] == [*MEMBERS, "thoth"] and first["fallback"] is None
    answers = {a["persona"]: a for a in first["answers"]}
    for persona, answer in answers.items():
        assert answer["error"] is None and answer["content"], (persona, answer)
        assert answer["completion_tokens"] >= 1, (persona, answer)
    assert {answers[p]["model"] for p in MEMBERS} == {"tiny", "story-a", "story-b"}
    # Each adapter changed the base model's words (greedy, same question).
    assert len({answers[p]["content"] for p in MEMBERS}) == 3
    assert result["final"]["persona"] == "scribe" and result["final"]["content"]
    # The three same-base personas were in vLLM's batch together, shown by vLLM's own
    # step count (no clock): each engine step gives each running request at most one
    # token, so with at most two at a time the engine needs at least
    # max(longest answer, half of all tokens) steps. Fewer steps: three ran at once.
    steps = sample(after, "vllm:iteration_tokens_total_count") - sample(
        before, "vllm:iteration_tokens_total_count")  # fmt: skip
    lengths = [answers[p]["completion_tokens"] for p in MEMBERS]
    assert sample(after, "vllm:generation_tokens_total") - sample(
        before, "vllm:generation_tokens_total") == sum(lengths)  # fmt: skip
    assert steps < max(max(lengths), math.ceil(sum(lengths) / 2)), (steps, lengths)


@pytest.mark.parametrize(("council", "members"), [
    ("chosen-by-vllm", {"maat", "lilith", "thoth"}),  # response_format json_schema
    ("chosen-by-llama", {"maat", "isis", "thoth"}),  # llama-server's json_schema field
])  # fmt: skip
def test_a_model_router_on_a_real_engine_chooses_by_forced_json(
    ring: Ring, council: str, members: set[str]
) -> None:
    result = ask(ring.gateway, council)
    [first] = result["rounds"]
    assert first["fallback"] is None, first["fallback"]
    assert first["routed"] and set(first["routed"]) <= members
    assert len(first["routed"]) <= 2  # max_personas
    assert sorted(a["persona"] for a in first["answers"]) == sorted(first["routed"])
    assert all(a["content"] for a in first["answers"])
    assert result["final"]["content"]
