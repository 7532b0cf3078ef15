"""Guard rails through the real gateway: keys, access, limits, queue, timeout, text on disk."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import httpx2

from gateway_harness import SCRIPT, RunningGateway, StartGateway, fake_codex, fake_table
from soulstone.guard.keys import hash_key, new_key


def keyed(name: str, **extra: Any) -> tuple[str, dict[str, Any]]:
    key, ident = new_key()
    return key, {name: {"keys": [{"id": ident, "hash": hash_key(key)}], **extra}}


def tcp(gateway: RunningGateway, key: str | None) -> httpx2.Client:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx2.Client(base_url=f"http://127.0.0.1:{gateway.tcp_port}", headers=headers,
                         timeout=60)  # fmt: skip


def ask(client: httpx2.Client, model: str = "m", **body: Any) -> httpx2.Response:
    return client.post("/v1/chat/completions", json={"model": model, "messages": [], **body})


def test_keys_access_and_admin(tmp_path: Path, start_gateway: StartGateway) -> None:
    codex = fake_codex(tmp_path / "c", fake_table("a", model="m"), fake_table("b", model="n"))
    good, good_client = keyed("app", models=["m"])
    admin, admin_client = keyed("ops", admin=True)
    unix_only, unix_client = keyed("local")
    unix_client["local"]["keys"][0]["transports"] = ["unix"]
    clients = {"clients": {**good_client, **admin_client, **unix_client}}
    gateway = start_gateway(codex, clients=clients)
    assert ask(tcp(gateway, good)).status_code == 200
    for key, code in ((None, "UNAUTHORIZED"), (good + "x", "UNAUTHORIZED"),
                      (unix_only, "UNAUTHORIZED")):  # fmt: skip
        refused = ask(tcp(gateway, key))
        assert refused.status_code == 401, key
        assert refused.json()["error"]["code"] == code
        assert refused.headers["X-Request-ID"]
    uds = gateway.http()
    on_socket = httpx2.Client(transport=httpx2.HTTPTransport(uds=str(gateway.socket)),
                              base_url="http://localhost",
                              headers={"Authorization": f"Bearer {unix_only}"})  # fmt: skip
    assert ask(on_socket).status_code == 200  # the unix-only key works on the socket
    forbidden = ask(tcp(gateway, good), model="n")
    assert forbidden.status_code == 403 and forbidden.json()["error"]["code"] == "MODEL_FORBIDDEN"
    listed = tcp(gateway, good).get("/v1/models").json()["data"]
    assert [m["id"] for m in listed] == ["m"]
    assert tcp(gateway, good).get("/metrics").status_code == 403
    assert tcp(gateway, good).get("/admin/status").status_code == 403
    assert tcp(gateway, admin).get("/metrics").status_code == 200
    assert tcp(gateway, None).get("/health").status_code == 200
    # Revoke the app's key: after a reload it no longer works.
    revoke = subprocess.run([str(SCRIPT), "clients", "revoke", "app"], env=gateway.env,
                            capture_output=True, text=True, check=False)  # fmt: skip
    assert revoke.returncode == 0, revoke.stderr
    assert uds.post("/admin/reload").json()["reloaded"] is True
    assert ask(tcp(gateway, good)).status_code == 401


def test_without_a_clients_file_only_the_owner_on_the_socket(
    tmp_path: Path, start_gateway: StartGateway
) -> None:
    gateway = start_gateway(fake_codex(tmp_path / "c", fake_table("a", model="m")), clients=None)
    assert ask(gateway.http()).status_code == 200  # the gateway's own user
    assert ask(tcp(gateway, None)).status_code == 401
    assert ask(tcp(gateway, gateway.key)).status_code == 401  # no file, no keys


def test_an_open_clients_file_is_refused(tmp_path: Path, start_gateway: StartGateway) -> None:
    codex = fake_codex(tmp_path / "c", fake_table("a", model="m"))
    reference = start_gateway(codex)
    clients = tmp_path / "config" / "soulstone" / "clients.yaml"
    clients.chmod(0o644)
    result = subprocess.run([str(SCRIPT), "--codex", str(codex), "serve", "--socket",
                             str(tmp_path / "other.sock")], env=reference.env,
                            capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    assert result.returncode == 1
    assert "wider than 0640" in result.stderr


def burst(gateway: RunningGateway, key: str, count: int, **body: Any) -> list[Any]:
    async def run() -> list[Any]:
        headers = {"Authorization": f"Bearer {key}"}
        async with aiohttp.ClientSession(headers=headers) as session:

            async def one() -> tuple[int, dict[str, str], Any]:
                async with session.post(
                    f"http://127.0.0.1:{gateway.tcp_port}/v1/chat/completions",
                    json={"model": "m", "messages": [], **body},
                ) as response:
                    return response.status, dict(response.headers), await response.json()

            return list(await asyncio.gather(*(one() for _ in range(count))))

    return list(asyncio.run(run()))


def test_rate_token_and_concurrency_limits(tmp_path: Path, start_gateway: StartGateway) -> None:
    codex = fake_codex(tmp_path / "c", fake_table("a", "--token-delay-ms", "100", model="m"))
    rpm, rpm_client = keyed("rpm", limits={"requests_per_minute": 5})
    tpm, tpm_client = keyed("tpm", limits={"tokens_per_minute": 20})
    conc, conc_client = keyed("conc", limits={"concurrent": 2})
    gateway = start_gateway(codex, clients={"clients": {**rpm_client, **tpm_client,
                                                         **conc_client}})  # fmt: skip
    ask(gateway.http())  # the engine is up
    results = burst(gateway, rpm, 10, max_tokens=1)
    statuses = sorted(status for status, _, _ in results)
    assert statuses == [200] * 5 + [429] * 5
    refused = next(r for r in results if r[0] == 429)
    assert refused[2]["error"]["code"] == "RATE_LIMITED" and int(refused[1]["Retry-After"]) >= 1
    results = burst(gateway, conc, 6, max_tokens=4)
    assert sorted(s for s, _, _ in results) == [200] * 2 + [429] * 4
    assert {r[2]["error"]["code"] for r in results if r[0] == 429} == {"CONCURRENCY_LIMITED"}
    first = ask(tcp(gateway, tpm), max_tokens=8)  # 8 tokens + 4 prompt (fake usage): 12
    second = ask(tcp(gateway, tpm), max_tokens=8)  # 24 used: over 20 from now on
    third = ask(tcp(gateway, tpm), max_tokens=8)
    assert (first.status_code, second.status_code, third.status_code) == (200, 200, 429)
    assert third.json()["error"]["code"] == "TOKEN_RATE_LIMITED"


def test_global_queue_answers_503_when_full_and_serves_what_it_took(
    tmp_path: Path, start_gateway: StartGateway
) -> None:
    codex = fake_codex(tmp_path / "c", fake_table("a", "--ttft-ms", "800", model="m"))
    gateway = start_gateway(codex, "--max-parallel", "2", "--queue", "2")
    ask(gateway.tcp())
    results = burst(gateway, gateway.key, 8, max_tokens=2)
    assert sorted(s for s, _, _ in results) == [200] * 4 + [503] * 4
    busy = next(r for r in results if r[0] == 503)
    assert busy[2]["error"]["code"] == "GATEWAY_BUSY" and int(busy[1]["Retry-After"]) >= 1


def test_completion_timeout_is_504_and_cancels_upstream(
    tmp_path: Path, start_gateway: StartGateway
) -> None:
    codex = fake_codex(tmp_path / "c", fake_table("a", "--ttft-ms", "5000", model="m"))
    gateway = start_gateway(codex, "--timeout", "1")
    gateway.http().post("/admin/up", json={"name": "a"})
    began = time.monotonic()
    answer = ask(gateway.http())
    assert answer.status_code == 504 and answer.json()["error"]["code"] == "COMPLETION_TIMEOUT"
    assert time.monotonic() - began < 4
    text = gateway.codex.joinpath("fake.toml").read_text()
    port = int(text.split("\nport = ")[1].split("\n")[0])
    deadline = time.monotonic() + 10
    while httpx2.get(f"http://127.0.0.1:{port}/fake/stats").json()["cancelled"] < 1:
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_no_client_text_lands_on_disk(tmp_path: Path, start_gateway: StartGateway) -> None:
    marker = f"MARKER-{uuid.uuid4().hex}"
    chatty, chatty_client = keyed("chatty", log_content=True)
    codex = fake_codex(tmp_path / "c", fake_table("a", model="m"),
                       fake_table("b", "--exit-at-once", "1", model="broken"))  # fmt: skip
    gateway = start_gateway(codex, clients={"clients": {**chatty_client}})
    uds = gateway.http()
    messages = [{"role": "user", "content": f"say {marker}"}]
    first = uds.post("/v1/chat/completions", json={"model": "m", "messages": messages})
    assert first.status_code == 200
    uds.post("/v1/chat/completions", json={"model": "m", "messages": messages, "stream": True})
    uds.post("/v1/completions", json={"model": "m", "prompt": marker})
    uds.post("/v1/embeddings", json={"model": "m", "input": [marker]})
    uds.post("/v1/chat/completions", json={"model": "broken", "messages": messages})
    uds.post("/v1/chat/completions", content=f'{{"model": "{marker}"'.encode())
    uds.post("/v1/chat/completions", json={"model": marker, "messages": messages})
    metrics = uds.get("/metrics").text
    assert marker not in metrics
    gateway.stop()
    leaked = [p for p in tmp_path.rglob("*") if p.is_file() and p.suffix not in (".toml",)
              and marker.encode() in p.read_bytes()]  # fmt: skip
    assert leaked == []
    # A client that opts in gets its text logged (so the grep above can see text at all).
    opted = start_gateway(codex, clients={"clients": {**chatty_client}})
    ask(tcp(opted, chatty), messages=messages)
    opted.stop()
    assert marker in opted.log.read_text()


def test_fuzzed_bodies_always_get_json_errors(tmp_path: Path, start_gateway: StartGateway) -> None:
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    gateway = start_gateway(fake_codex(tmp_path / "c", fake_table("a", model="m")))
    http = gateway.http()
    values = st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                                     max_size=3),
        max_leaves=10,
    )  # fmt: skip
    fields = st.sampled_from(["model", "messages", "stream", "max_tokens", "prompt", "functions",
                              "function_call"])  # fmt: skip
    bodies = (
        st.binary(max_size=300)
        | values.map(lambda v: json.dumps(v).encode())
        | st.dictionaries(fields, values, max_size=5).map(lambda d: json.dumps(d).encode())
    )
    content_types = st.sampled_from(["application/json", "text/plain", "", "multipart/form-data"])

    @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
    @given(
        body=bodies,
        content_type=content_types,
        path=st.sampled_from(["/v1/chat/completions", "/v1/completions", "/v1/embeddings"]),
    )
    def check(body: bytes, content_type: str, path: str) -> None:
        response = http.post(path, content=body, headers={"Content-Type": content_type})
        if response.status_code != 200:
            document = response.json()
            assert document["error"]["code"] and document["error"]["message"]
        assert response.headers["X-Request-ID"]

    check()
    huge = http.post("/v1/chat/completions", content=b"x" * (33 * 2**20))
    assert huge.status_code == 413 and huge.json()["error"]["code"] == "PAYLOAD_TOO_LARGE"
    assert http.get("/health").status_code == 200
    assert gateway.process.poll() is None
