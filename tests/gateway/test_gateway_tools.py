"""The tools contract at the door: drift stops the start, mismatched tools are refused."""

from __future__ import annotations

import copy
import json
import subprocess
from pathlib import Path
from typing import Any

import openai
import pytest

from gateway_harness import SCRIPT, StartGateway, fake_codex, fake_table
from helpers import free_port, write
from soulstone.tools.policy import DEFAULT_FUNCTIONS


def tool(index: int) -> dict[str, Any]:
    return {"type": "function", "function": copy.deepcopy(DEFAULT_FUNCTIONS[index])}


def test_drift_refuses_the_start_and_pin_fixes_it(
    tmp_path: Path, start_gateway: StartGateway
) -> None:
    codex = fake_codex(tmp_path / "c", fake_table("a", model="m"))
    reference = start_gateway(codex)
    policy = tmp_path / "tools.yaml"

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(SCRIPT), "--codex", str(codex), *args], env=reference.env, capture_output=True,
            text=True, timeout=60, check=False,
        )  # fmt: skip

    assert run("tools", "init", "--tools", str(policy)).returncode == 0
    assert run("tools", "init", "--tools", str(policy)).returncode == 1  # never overwrites
    assert run("tools", "check", "--tools", str(policy)).returncode == 0
    policy.write_text(policy.read_text().replace("Search archival memory.", "Search it all."))
    checked = run("tools", "check", "--tools", str(policy))
    assert checked.returncode == 1 and "drifted: search_archival" in checked.stderr
    refused = run("serve", "--tools", str(policy), "--socket", str(tmp_path / "x.sock"))
    assert refused.returncode == 1
    assert "search_archival" in refused.stderr and "tools pin" in refused.stderr
    assert run("tools", "pin", "--tools", str(policy)).returncode == 0
    assert run("tools", "check", "--tools", str(policy)).returncode == 0


def test_requests_with_foreign_or_changed_tools_are_refused(
    tmp_path: Path, start_gateway: StartGateway
) -> None:
    gateway = start_gateway(fake_codex(tmp_path / "c", fake_table("a", model="m")))
    http = gateway.http()
    ok = http.post("/v1/chat/completions",
                   json={"model": "m", "messages": [], "tools": [tool(0), tool(4)]})  # fmt: skip
    assert ok.status_code == 200
    changed = tool(1)
    changed["function"]["description"] = "Read whatever."
    refused = http.post("/v1/chat/completions",
                        json={"model": "m", "messages": [], "tools": [tool(0), changed]},
                        headers={"X-Request-ID": "tools-1"})  # fmt: skip
    assert refused.status_code == 400
    body = refused.json()
    assert (body["error"]["code"], body["error"]["tool"], body["error"]["pointer"]) == (
        "TOOL_SCHEMA_MISMATCH", "fetch_core", "/description",
    )  # fmt: skip
    assert refused.headers["X-Request-ID"] == "tools-1"
    legacy = {"model": "m", "messages": [],
              "functions": [{"name": "format_disk", "parameters": {}}]}  # fmt: skip
    # A tool the policy does not name passes by default (ordinary agent tools work) ...
    assert http.post("/v1/chat/completions", json=legacy).status_code == 200
    # ... and is refused under --strict.
    strict = start_gateway(fake_codex(tmp_path / "s", fake_table("a", model="m")), "--strict",
                           tcp=False)  # fmt: skip
    refused = strict.http().post("/v1/chat/completions", json=legacy)
    assert refused.status_code == 400
    assert (refused.json()["error"]["code"], refused.json()["error"]["tool"]) == (
        "TOOL_SCHEMA_MISMATCH", "format_disk",
    )  # fmt: skip


@pytest.mark.engine
def test_openai_client_with_tools_against_llama_server(
    tmp_path: Path, start_gateway: StartGateway
) -> None:
    from real_engines import llama_server, tiny_gguf

    command = [str(llama_server()), "-m", str(tiny_gguf()), "-c", "512", "-t", "1", "--no-warmup",
               "--jinja"]  # fmt: skip
    codex = write(tmp_path / "codex", {"l.toml": (
        f"[tiny]\nport = {free_port()}\nexec = {json.dumps(command)}\n"
        "health = { start_timeout = 60, interval = 0.1 }\n"
    )})  # fmt: skip
    client = start_gateway(codex).uds_client(max_retries=0)
    reply = client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "remember this"}], max_tokens=4,
        tools=[tool(0)],  # type: ignore[list-item]
    )  # fmt: skip
    assert reply.choices[0].message.role == "assistant"  # passed through to the engine
    foreign = {"type": "function", "function": {"name": "shell", "parameters": {"type": "object"}}}
    passed = client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "x"}], max_tokens=4,
        tools=[foreign],  # type: ignore[list-item]
    )  # fmt: skip
    assert passed.choices[0].message.role == "assistant"  # tools the policy does not name pass
    changed = tool(0)
    changed["function"]["description"] = "Something else."
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": "x"}], max_tokens=4,
            tools=[changed],  # type: ignore[list-item]
        )  # fmt: skip
    assert caught.value.code == "TOOL_SCHEMA_MISMATCH"  # what the SDK shows
    assert "differs from the pinned schema" in caught.value.message


def test_answers_tool_calls_are_validated(tmp_path: Path, start_gateway: StartGateway) -> None:
    hermes = fake_table("h", model="hermes-model", extra='tool_parser = "hermes"')
    codex = fake_codex(tmp_path / "c", fake_table("a", model="m"), hermes)
    http = start_gateway(codex).http()

    def ask(kind: str, model: str = "m", **headers: str) -> Any:
        body = {"model": model, "messages": [{"role": "user", "content": f"CALL:{kind}"}],
                "tools": [tool(0), tool(1)]}  # fmt: skip
        return http.post("/v1/chat/completions", json=body, headers=headers)

    valid = ask("valid")
    assert valid.status_code == 200
    assert valid.json()["choices"][0]["message"]["tool_calls"][0]["function"]["name"] == (
        "store_core"
    )
    for kind, words in (("badjson", "not JSON"), ("schema", "is not of type 'string'")):
        refused = ask(kind)
        assert refused.status_code == 502, kind
        assert refused.json()["error"]["code"] == "TOOL_CALL_INVALID"
        assert words in refused.json()["error"]["message"]
    flagged = ask("schema", **{"X-Soulstone-Tool-Validation": "pass"})
    assert flagged.status_code == 200
    problems = flagged.json()["soulstone_invalid_tool_calls"]
    assert problems[0]["name"] == "fetch_core" and "/label" in problems[0]["message"]
    parsed = ask("hermes", model="hermes-model").json()["choices"][0]
    assert parsed["finish_reason"] == "tool_calls"
    assert parsed["message"]["content"] == "Sure."
    call = parsed["message"]["tool_calls"][0]["function"]
    assert call["name"] == "fetch_core" and json.loads(call["arguments"]) == {"label": "x"}


def test_streamed_tool_calls_arrive_whole(tmp_path: Path, start_gateway: StartGateway) -> None:
    http = start_gateway(fake_codex(tmp_path / "c", fake_table("a", model="m"))).http()
    body = {"model": "m", "stream": True, "tools": [tool(0), tool(1)],
            "messages": [{"role": "user", "content": "CALL:stream"}]}  # fmt: skip
    with http.stream("POST", "/v1/chat/completions", json=body) as response:
        events = [line.removeprefix("data: ") for line in response.iter_lines() if line]
    assert events[-1] == "[DONE]"
    parsed = [json.loads(e) for e in events[:-1]]
    calls = [p["choices"][0]["delta"]["tool_calls"] for p in parsed
             if "choices" in p and p["choices"][0]["delta"].get("tool_calls")]  # fmt: skip
    assert len(calls) == 1 and calls[0][0]["function"]["name"] == "store_core"
    assert json.loads(calls[0][0]["function"]["arguments"]) == {"label": "name", "value": "Ada"}
    errors = [p for p in parsed if "error" in p]
    assert len(errors) == 1 and errors[0]["error"]["code"] == "TOOL_CALL_INVALID"
    assert errors[0]["error"]["index"] == 1
    assert parsed[0]["choices"][0]["delta"]["content"] == "Working"


def test_heartbeat_chains_are_limited_per_session(
    tmp_path: Path, start_gateway: StartGateway
) -> None:
    gateway = start_gateway(fake_codex(tmp_path / "c", fake_table("a", model="m")))
    http = gateway.http()

    def beat(session: str, kind: str = "heartbeat") -> Any:
        body = {"model": "m", "tools": [tool(0)],
                "messages": [{"role": "user", "content": f"CALL:{kind}"}]}  # fmt: skip
        return http.post("/v1/chat/completions", json=body,
                         headers={"X-Conveyance-Session-ID": session})  # fmt: skip

    assert beat("s1").status_code == 200  # opens the chain
    assert [beat("s1").status_code for _ in range(3)] == [200, 200, 200]
    limited = beat("s1")
    assert (
        limited.status_code == 429 and limited.json()["error"]["code"] == "HEARTBEAT_RATE_LIMITED"
    )
    assert int(limited.headers["Retry-After"]) >= 1
    assert beat("s1").json()["error"]["code"] == "HEARTBEAT_COOLDOWN"
    assert beat("s2").status_code == 200  # another session is unaffected
    metrics = http.get("/metrics").text
    assert 'soulstone_heartbeat_refusals_total{code="HEARTBEAT_RATE_LIMITED"} 1.0' in metrics
