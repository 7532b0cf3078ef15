"""A remote's `tokenizer` folder counts its token budget here (SPEC C12), as transformers would.

The remotes are fake engines on local ports: one without `/tokenize` (a plain
OpenAI-compatible server), one with it (whose fake count, words + 4 per
message, differs from the real tokenizer's: the declared folder must win).
The folder is the tiny HF Llama that scripts/build-vllm-cpu builds; the
expected count comes from transformers' `apply_chat_template` in that
build's environment, independently of soulstone.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway_harness import StartGateway, keyed
from helpers import write
from real_engines import tiny_hf_model, vllm_python
from remote_helpers import StartRemote, remote_calls, remote_starter, remote_table, wait_states

pytestmark = pytest.mark.engine

LIMIT = 64
LONG = [{"role": "user", "content": " ".join(["the remote counts every one of these words"] * 12)}]
SHORT = [{"role": "user", "content": "hi"}]


@pytest.fixture
def start_remote() -> Iterator[StartRemote]:
    """Fake engines as remotes, stopped after the test."""
    with remote_starter() as start:
        yield start


def transformers_count(folder: Path, messages: list[Any]) -> int:
    """transformers' own count of a chat (template applied, generation prompt added)."""
    script = (
        "import json, sys\nfrom transformers import AutoTokenizer\n"
        "tokenizer = AutoTokenizer.from_pretrained(sys.argv[1])\n"
        "found = tokenizer.apply_chat_template(json.loads(sys.argv[2]), "
        "add_generation_prompt=True, tokenize=True)\n"
        "print(len(found['input_ids'] if hasattr(found, 'keys') else found))\n"
    )
    done = subprocess.run([str(vllm_python()), "-c", script, str(folder), json.dumps(messages)],
                          capture_output=True, text=True, timeout=300, check=True)  # fmt: skip
    return int(done.stdout.strip().splitlines()[-1])


def test_a_declared_tokenizer_counts_the_budget(
    tmp_path: Path, start_gateway: StartGateway, start_remote: StartRemote
) -> None:
    folder = tiny_hf_model()
    plain = start_remote("plain", "--no-tokenize")
    counting = start_remote("counting")  # has /tokenize, with a count of its own
    uncounted = start_remote("uncounted", "--no-tokenize")
    codex = write(tmp_path / "c", {"r.toml": (
        remote_table("plain", plain, '["plain"]', f'tokenizer = "{folder}"\n')
        + remote_table("counting", counting, '["counting"]', f'tokenizer = "{folder}"\n')
        + remote_table("uncounted", uncounted, '["uncounted"]')
    )})  # fmt: skip
    key, entry = keyed("alice", limits={"max_context_tokens": LIMIT})
    gateway = start_gateway(codex, clients={"clients": entry})
    wait_states(gateway, {"plain": "running", "counting": "running", "uncounted": "running"})
    expected = transformers_count(folder, LONG)
    assert expected > LIMIT

    def ask(model: str, messages: list[Any]) -> Any:
        with gateway.http() as http:
            http.headers["Authorization"] = f"Bearer {key}"
            body = {"model": model, "messages": messages, "max_tokens": 4}
            return http.post("/v1/chat/completions", json=body)

    for model in ("plain", "counting"):
        refused = ask(model, LONG)
        assert refused.status_code == 400, refused.text
        error = refused.json()["error"]
        assert error["code"] == "TOKEN_BUDGET_EXCEEDED"
        assert (error["limit"], error["prompt_tokens"]) == (LIMIT, expected)
        assert ask(model, SHORT).status_code == 200
    assert len(remote_calls(plain)) == len(remote_calls(counting)) == 1  # only the short ones
    # Without a folder, a remote with no /tokenize keeps its own budget: the prompt goes on.
    assert ask("uncounted", LONG).status_code == 200
    assert len(remote_calls(uncounted)) == 1
    assert "tokenizer folder unusable" not in gateway.log.read_text()
