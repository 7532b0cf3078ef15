"""The gateway with fake engines: routing, errors, correlation, admin, legacy, TTL, metrics."""

from __future__ import annotations

import json
import os
import stat
import time
from pathlib import Path
from typing import Any

import httpx2
import openai
import pytest

from gateway_harness import RunningGateway, StartGateway, fake_codex, fake_table
from soulstone.tools.policy import DEFAULT_FUNCTIONS


@pytest.fixture
def pair(tmp_path: Path, start_gateway: StartGateway) -> RunningGateway:
    codex = fake_codex(
        tmp_path / "codex",
        fake_table("a", model="model-a", group="ga"),
        fake_table("b", model="model-b", group="gb", socket_path=tmp_path / "b.sock"),
    )
    return start_gateway(codex, "--max-wait", "0.5")


def test_socket_folder_and_mode(pair: RunningGateway) -> None:
    assert stat.S_IMODE(pair.socket.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(pair.socket.stat().st_mode) == 0o660
    assert stat.S_ISSOCK(pair.socket.stat().st_mode)


def test_openai_client_over_socket_and_tcp(pair: RunningGateway) -> None:
    for client in (pair.uds_client(), pair.tcp_client()):
        listed = {m.id: m for m in client.models.list().data}
        assert set(listed) == {"model-a", "model-b"}
        reply = client.chat.completions.create(
            model="model-a", messages=[{"role": "user", "content": "hi"}]
        )
        assert reply.choices[0].message.content == "tok0 tok1 tok2 tok3 tok4 tok5 tok6 tok7"
        chunks = list(client.chat.completions.create(
            model="model-b", messages=[{"role": "user", "content": "hi"}], stream=True,
        ))  # fmt: skip
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == (
            "tok0 tok1 tok2 tok3 tok4 tok5 tok6 tok7"
        )
        completion = client.completions.create(model="model-a", prompt="hi", max_tokens=3)
        assert completion.choices[0].text == "tok0 tok1 tok2"
        embedding = client.embeddings.create(model="model-b", input=["x", "y"],
                                             encoding_format="float")  # fmt: skip
        assert len(embedding.data) == 2
    models = pair.http().get("/v1/models").json()["data"]
    assert {(m["id"], m["soulstone"]) for m in models} == {("model-a", "a"), ("model-b", "b")}
    assert all(isinstance(m["running"], bool) for m in models)


def test_errors_are_json_with_correlation_headers(pair: RunningGateway) -> None:
    http = pair.http()
    cases = [
        ("POST", "/v1/chat/completions", b'{"model": "nope"}', 404, "MODEL_NOT_FOUND"),
        ("POST", "/v1/chat/completions", b"{not json", 400, "INVALID_JSON"),
        ("POST", "/v1/chat/completions", b'{"messages": []}', 400, "MODEL_MISSING"),
        ("POST", "/v1/chat/completions", b"[1]", 400, "INVALID_JSON"),
        ("GET", "/v1/chat/completions", b"", 405, "METHOD_NOT_ALLOWED"),
        ("GET", "/v2/nothing", b"", 404, "NOT_FOUND"),
    ]
    for method, path, body, status, code in cases:
        response = http.request(method, path, content=body,
                                headers={"X-Conveyance-Session-ID": "sess-1"})  # fmt: skip
        assert response.status_code == status, (path, response.text)
        document = response.json()
        assert document["error"]["code"] == code and document["error"]["message"]
        assert len(response.headers["X-Request-ID"]) >= 16
        assert response.headers["X-Conveyance-Session-ID"] == "sess-1"
    missing = http.post("/v1/chat/completions", content=b'{"model": "nope"}').json()
    assert missing["error"]["models"] == ["model-a", "model-b"]
    assert "valid models: model-a, model-b" in missing["error"]["message"]
    ok = http.post("/v1/chat/completions", json={"model": "model-a", "messages": []},
                   headers={"X-Request-ID": "req-42"})  # fmt: skip
    assert ok.headers["X-Request-ID"] == "req-42"
    assert http.get("/health").headers["X-Request-ID"]
    metrics = http.get("/metrics").text
    assert "soulstone_request_ids_generated_total" in metrics


def test_admin_api_and_cli_through_the_gateway(pair: RunningGateway) -> None:
    http = pair.http()
    status = http.get("/admin/status").json()
    assert {s["id"] for s in status["soulstones"]} == {"a", "b"}
    plan = http.post("/admin/up", json={"name": "a", "dry_run": True}).json()
    assert plan == {"targets": ["a"], "stop": [], "start": ["a"]}
    up = pair.cli("up", "a")
    assert up.returncode == 0, up.stderr
    assert "started a" in up.stdout
    swap = pair.cli("up", "b")
    assert "stopped a: b conflicts with a: no shared group" in swap.stdout
    listed = json.loads(pair.cli("status", "--json").stdout)["soulstones"]
    assert {s["id"]: s["state"] for s in listed} == {"a": "stopped", "b": "running"}
    unknown = pair.cli("up", "zzz")
    assert unknown.returncode == 2
    down = pair.cli("down")
    assert down.returncode == 0 and "stopped b" in down.stdout
    anonymous = httpx2.get(f"http://127.0.0.1:{pair.tcp_port}/admin/status")
    assert anonymous.status_code == 401
    assert anonymous.json()["error"]["code"] == "UNAUTHORIZED"
    with_key = pair.tcp().get("/admin/status")  # the harness's key is an admin's
    assert with_key.status_code == 200


def test_legacy_functions_become_tools(tmp_path: Path, start_gateway: StartGateway) -> None:
    gateway = start_gateway(fake_codex(tmp_path / "c", fake_table("a", model="m")))
    http = gateway.http()
    body: dict[str, Any] = {
        "model": "m", "messages": [{"role": "user", "content": "x"}],
        "functions": [DEFAULT_FUNCTIONS[1]],
        "function_call": {"name": "fetch_core"},
    }  # fmt: skip
    assert http.post("/v1/chat/completions", json=body).status_code == 200
    last = _last_upstream_body(gateway)
    assert "functions" not in last and "function_call" not in last
    assert last["tools"] == [{"type": "function", "function": body["functions"][0]}]
    assert last["tool_choice"] == {"type": "function", "function": {"name": "fetch_core"}}


def _last_upstream_body(gateway: RunningGateway) -> dict[str, object]:
    text = gateway.codex.joinpath("fake.toml").read_text()
    port = int(text.split("\nport = ")[1].split("\n")[0])
    return dict(httpx2.get(f"http://127.0.0.1:{port}/fake/last").json())


def test_idle_soulstones_stop_after_their_ttl(tmp_path: Path, start_gateway: StartGateway) -> None:
    codex = fake_codex(tmp_path / "c", fake_table("a", model="m", extra="ttl = 1"))
    gateway = start_gateway(codex, "--idle-check", "0.2")
    http = gateway.http()
    assert http.post("/v1/chat/completions", json={"model": "m", "messages": []}).status_code == 200
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if any(e.get("event") == "stopped idle soulstones" for e in gateway.logged()):
            break
        time.sleep(0.2)
    states = {s["id"]: s["state"] for s in http.get("/admin/status").json()["soulstones"]}
    assert states["a"] == "stopped"
    again = http.post("/v1/chat/completions", json={"model": "m", "messages": []})
    assert again.status_code == 200  # it comes back on demand


def test_sigterm_stops_the_engines_it_started(pair: RunningGateway) -> None:
    http = pair.http()
    assert http.post("/v1/chat/completions", json={"model": "model-a"}).status_code == 200
    kept = json.loads(pair.state.keeper("a").read_text())
    assert pair.stop() == 0
    from soulstone.runtimes import procfs

    assert procfs.group_members(kept["pgid"]) == []
    assert not pair.socket.exists()
    assert os.path.isdir(pair.socket.parent)


def test_unavailable_engine_is_503_with_retry_after(
    tmp_path: Path, start_gateway: StartGateway
) -> None:
    codex = fake_codex(tmp_path / "c", fake_table("a", "--exit-at-once", "2", model="m"))
    gateway = start_gateway(codex)
    response = gateway.http().post("/v1/chat/completions", json={"model": "m"})
    assert response.status_code == 503
    # The request waited through the restarts (3 failed starts) until the soulstone was marked.
    assert response.json()["error"]["code"] == "ENGINE_FAILED"
    assert int(response.headers["Retry-After"]) > 0
    assert "exit 2" in response.json()["error"]["message"]
    with pytest.raises(openai.APIStatusError):
        gateway.uds_client(max_retries=0).chat.completions.create(model="m", messages=[])
