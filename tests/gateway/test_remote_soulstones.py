"""Two soulstone gateways as two hosts (SPEC C12): box A routes to box B's model as a remote.

Each box is a network namespace of its own (`ip netns`), joined by a veth
pair with an address at each end, so A reaches B over a real network path.
B serves the tiny llama-server; A declares B's model `remote` with B's key
in a 0600 key file. Also the Unix-socket form: a third gateway reaches B's
own API socket through `http+unix://`, with `models = "discover"`.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx2
import openai
import pytest

from gateway_harness import RunningGateway, StartGateway, gateway_starter
from helpers import free_port, write
from real_engines import llama_table
from soulstone.guard.keys import hash_key, new_key

pytestmark = pytest.mark.engine

LONG_PROMPT = " ".join(["the remote counts every one of these words"] * 12)


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


@dataclass
class Hosts:
    """Two network namespaces joined by a veth pair, and each end's address."""

    a: str
    b: str
    a_address: str
    b_address: str


@pytest.fixture(scope="module")
def hosts() -> Iterator[Hosts]:
    """Namespaces ss-a-*/ss-b-* with a veth pair (10.R.R.1 and .2); deleted afterwards."""
    tag = secrets.token_hex(3)
    a, b = f"ss-a-{tag}", f"ss-b-{tag}"
    octet, second = 100 + int(tag[:2], 16) % 100, int(tag[2:4], 16)
    found = Hosts(a, b, f"10.{octet}.{second}.1", f"10.{octet}.{second}.2")
    made: list[str] = []
    try:
        for name in (a, b):
            _ip("netns", "add", name)
            made.append(name)
            _ip("-n", name, "link", "set", "lo", "up")
        _ip("link", "add", f"va{tag}", "netns", a, "type", "veth", "peer", "name", f"vb{tag}",
            "netns", b)  # fmt: skip
        _ip("-n", a, "addr", "add", f"{found.a_address}/24", "dev", f"va{tag}")
        _ip("-n", b, "addr", "add", f"{found.b_address}/24", "dev", f"vb{tag}")
        _ip("-n", a, "link", "set", f"va{tag}", "up")
        _ip("-n", b, "link", "set", f"vb{tag}", "up")
        yield found
    finally:
        for name in made:  # deleting a namespace deletes its end of the pair too
            subprocess.run(["ip", "netns", "del", name], check=False, timeout=30)


@dataclass
class Federation:
    """Box B (the engine), box A (routing to it), the keys, and how to start B again."""

    a: RunningGateway
    b: RunningGateway
    keys: dict[str, str]
    b_port: int
    b_engine_port: int
    restart_b: StartGateway
    b_codex: Path
    b_clients: dict[str, object]
    hosts: Hosts
    peer_key: str


def _client(name: str, **entry: object) -> tuple[str, dict[str, object]]:
    key, key_id = new_key()
    return key, {name: {"keys": [{"id": key_id, "hash": hash_key(key)}], **entry}}


@pytest.fixture(scope="module")
def federation(hosts: Hosts, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Federation]:
    """B serves `tiny` on its veth address; A declares it remote with B's key in a key file."""
    root = tmp_path_factory.mktemp("federation")
    engine_port = free_port()
    peer_key, peer = _client("peer-a")
    b_clients: dict[str, object] = {"clients": peer}
    b_codex = write(root / "b-codex", {"b.toml": llama_table(
        "tiny", "tiny", "box", f"port = {engine_port}")})  # fmt: skip
    keys: dict[str, str] = {}
    a_entries: dict[str, object] = {}
    for name, entry in (
        ("alice", {"limits": {"max_context_tokens": 64}}),
        ("bob", {"models": ["elsewhere"]}),
        ("carol", {"limits": {"requests_per_minute": 1}}),
    ):
        keys[name], found = _client(name, **entry)
        a_entries |= found
    key_file = root / "peer.key"
    key_file.write_text(peer_key + "\n")
    key_file.chmod(0o600)
    b_port = free_port()
    a_codex = write(root / "a-codex", {"a.toml": (
        f'[peer]\nremote = "http://{hosts.b_address}:{b_port}/v1"\n'
        f'key_file = "{key_file}"\nmodels = ["tiny"]\nhealth = {{ interval = 0.2 }}\n'
    )})  # fmt: skip
    with gateway_starter(root / "b") as start_b, gateway_starter(root / "a") as start_a:
        b = start_b(b_codex, clients=b_clients, with_harness=True, netns=hosts.b,
                    tcp_host=hosts.b_address, port=b_port)  # fmt: skip
        a = start_a(a_codex, clients={"clients": a_entries}, tcp=False, netns=hosts.a)
        yield Federation(
            a, b, keys, b_port, engine_port, start_b, b_codex, b_clients, hosts, peer_key
        )


def _openai(gateway: RunningGateway, key: str, timeout: float = 120) -> openai.OpenAI:
    http = httpx2.Client(transport=httpx2.HTTPTransport(uds=str(gateway.socket)), timeout=timeout)
    return openai.OpenAI(base_url="http://localhost/v1", api_key=key, http_client=http,
                         max_retries=0)  # fmt: skip


def _http(gateway: RunningGateway, key: str, timeout: float = 120) -> httpx2.Client:
    return httpx2.Client(transport=httpx2.HTTPTransport(uds=str(gateway.socket)),
                         base_url="http://localhost", timeout=timeout,
                         headers={"Authorization": f"Bearer {key}"})  # fmt: skip


def _engine_count(hosts: Hosts, port: int, messages: list[Any]) -> int:
    """B's llama-server's own count of a chat prompt (template applied), asked inside B."""
    script = (
        "import json, sys, urllib.request as u\n"
        "def post(path, body):\n"
        f"    r = u.Request('http://127.0.0.1:{port}' + path, json.dumps(body).encode(),"
        " {'Content-Type': 'application/json'})\n"
        "    return json.load(u.urlopen(r, timeout=30))\n"
        "text = post('/apply-template', {'messages': json.loads(sys.argv[1])})['prompt']\n"
        "print(len(post('/tokenize', {'content': text, 'add_special': True})['tokens']))\n"
    )
    done = subprocess.run(["ip", "netns", "exec", hosts.b, sys.executable, "-c", script,
                           json.dumps(messages)], capture_output=True, text=True, timeout=60,
                          check=True)  # fmt: skip
    return int(done.stdout.strip())


def test_a_gets_b_answers_whole_and_streamed(federation: Federation) -> None:
    client = _openai(federation.a, federation.keys["alice"])
    raw = client.chat.completions.with_raw_response.create(
        model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=4)  # fmt: skip
    reply = raw.parse()
    assert reply.choices[0].message.role == "assistant"
    assert reply.usage is not None and reply.usage.completion_tokens >= 1
    with federation.b.http() as http:  # B answered it, to A's key
        http.headers["Authorization"] = f"Bearer {federation.b.key}"
        exposition = http.get("/metrics").text
    assert 'client="peer-a"' in exposition
    chunks = list(client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=4,
        stream=True))  # fmt: skip
    assert chunks and any(c.choices and c.choices[0].finish_reason for c in chunks)
    assert federation.peer_key not in federation.a.log.read_text()  # never logged


def test_budget_is_counted_by_b_tokenize(federation: Federation) -> None:
    messages: list[Any] = [{"role": "user", "content": LONG_PROMPT}]
    with pytest.raises(openai.BadRequestError) as refused:
        _openai(federation.a, federation.keys["alice"]).chat.completions.create(
            model="tiny", messages=messages, max_tokens=8)  # fmt: skip
    error = refused.value.body
    assert isinstance(error, dict) and error["code"] == "TOKEN_BUDGET_EXCEEDED"
    assert error["limit"] == 64
    assert error["prompt_tokens"] == _engine_count(federation.hosts, federation.b_engine_port,
                                                   messages)  # fmt: skip


def test_tokenize_and_model_states_on_b(federation: Federation) -> None:
    with federation.b.http() as http:
        http.headers["Authorization"] = f"Bearer {federation.b.key}"
        counted = http.post("/tokenize", json={"model": "tiny", "prompt": "hello there"})
        assert counted.status_code == 200 and counted.json()["count"] >= 1
        missing = http.post("/tokenize", json={"model": "nothing", "prompt": "x"})
        assert missing.status_code == 404
        assert missing.json()["error"]["code"] == "MODEL_NOT_FOUND"
        listed = http.get("/v1/models").json()["data"]
        assert {m["id"]: m["engine_state"] for m in listed}["tiny"] in ("running", "stopped")


def test_a_forbids_and_limits_as_for_local_engines(federation: Federation) -> None:
    with pytest.raises(openai.PermissionDeniedError):
        _openai(federation.a, federation.keys["bob"]).chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=2)  # fmt: skip
    carol = _openai(federation.a, federation.keys["carol"])
    carol.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}],
                                  max_tokens=2)  # fmt: skip
    with pytest.raises(openai.RateLimitError):
        carol.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}],
                                      max_tokens=2)  # fmt: skip


def _state(gateway: RunningGateway, key: str) -> str:
    with _http(gateway, key, timeout=10) as http:
        listed = http.get("/v1/models").json()["data"]
    return str({m["id"]: m.get("engine_state") for m in listed}.get("tiny"))


def _wait_state(gateway: RunningGateway, key: str, wanted: str, limit: float = 90) -> None:
    deadline = time.monotonic() + limit
    while (found := _state(gateway, key)) != wanted:
        assert time.monotonic() < deadline, f"tiny stayed {found}, not {wanted}"
        time.sleep(0.1)


def test_b_down_gives_503_at_once_and_b_back_routes_again(federation: Federation) -> None:
    alice = federation.keys["alice"]
    federation.b.stop()
    # The client's own timeout (5 s) must not be hit: the breaker answers at once.
    with _http(federation.a, alice, timeout=5) as http:
        for _ in range(2):  # the first finds B gone, the second meets the open breaker
            answer = http.post("/v1/chat/completions", json={
                "model": "tiny", "messages": [{"role": "user", "content": "hi"}],
                "max_tokens": 2})  # fmt: skip
            assert answer.status_code == 503, answer.text
            assert answer.json()["error"]["code"] == "ENGINE_UNAVAILABLE"
            assert int(answer.headers["Retry-After"]) >= 1
    assert _state(federation.a, alice) == "unreachable"
    federation.b = federation.restart_b(
        federation.b_codex, clients=federation.b_clients, with_harness=True,
        netns=federation.hosts.b, tcp_host=federation.hosts.b_address, port=federation.b_port,
    )  # fmt: skip
    _wait_state(federation.a, alice, "running")
    reply = _openai(federation.a, alice).chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "hi again"}], max_tokens=4)  # fmt: skip
    assert reply.choices[0].message.role == "assistant"
    assert federation.a.process.poll() is None  # A was never restarted


def test_unix_socket_form_with_discovery(federation: Federation, tmp_path: Path) -> None:
    b = federation.b  # reached with its harness key, through its own API socket
    key_file = tmp_path / "b.key"
    key_file.write_text(b.key)
    key_file.chmod(0o600)
    address = f"http+unix://{quote(str(b.socket), safe='')}/v1"
    codex = write(tmp_path / "codex", {"c.toml": (
        f'[viasock]\nremote = "{address}"\nkey_file = "{key_file}"\nmodels = "discover"\n'
        "health = { interval = 0.2 }\n"
    )})  # fmt: skip
    key, entry = _client("dave")
    with gateway_starter(tmp_path / "c") as start:
        c = start(codex, clients={"clients": entry}, tcp=False)
        _wait_state(c, key, "running")
        reply = _openai(c, key).chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=4)  # fmt: skip
        assert reply.choices[0].message.role == "assistant"


def test_key_file_open_to_others_stops_the_gateway(tmp_path: Path) -> None:
    key_file = tmp_path / "k"
    key_file.write_text("secret-value\n")
    key_file.chmod(0o644)
    codex = write(tmp_path / "codex", {"r.toml": (
        f'[far]\nremote = "http://192.0.2.1:9/v1"\nkey_file = "{key_file}"\n'
    )})  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("XDG_")}
    env |= {"XDG_CONFIG_HOME": str(tmp_path / "cfg"), "XDG_RUNTIME_DIR": str(tmp_path / "run"),
            "XDG_STATE_HOME": str(tmp_path / "state")}  # fmt: skip
    (tmp_path / "run").mkdir(mode=0o700)
    script = Path(sys.executable).parent / "soulstone"
    done = subprocess.run([str(script), "--codex", str(codex), "serve"], env=env,
                          capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    assert done.returncode != 0
    assert "wider than 0600" in done.stdout + done.stderr
    assert "secret-value" not in done.stdout + done.stderr
