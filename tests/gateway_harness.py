"""Start `soulstone serve` (the real console script) for a test, and stop it after."""

from __future__ import annotations

import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2
import openai
import pytest
import yaml

from conftest import kill_recorded
from helpers import FAKE_ENGINE, free_port, terminate, write
from soulstone.guard.keys import hash_key, new_key
from soulstone.runtimes.state import StateFolder

SCRIPT = Path(sys.executable).parent / "soulstone"


@dataclass
class RunningGateway:
    """A gateway process and how to talk to it."""

    process: subprocess.Popen[bytes]
    socket: Path
    tcp_port: int
    codex: Path
    state: StateFolder
    log: Path
    env: dict[str, str]
    key: str = ""
    tcp_host: str = "127.0.0.1"

    def uds_client(self, **options: Any) -> openai.OpenAI:
        http = httpx2.Client(transport=httpx2.HTTPTransport(uds=str(self.socket)), timeout=120)
        return openai.OpenAI(base_url="http://localhost/v1", api_key="none",
                             http_client=http, **options)  # fmt: skip

    def tcp_client(self, **options: Any) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"http://{self.tcp_host}:{self.tcp_port}/v1",
                             api_key=self.key, timeout=120, **options)  # fmt: skip

    def tcp(self) -> httpx2.Client:
        """A plain HTTP client on TCP, sending the harness's admin key."""
        return httpx2.Client(base_url=f"http://{self.tcp_host}:{self.tcp_port}", timeout=120,
                             headers={"Authorization": f"Bearer {self.key}"})  # fmt: skip

    def http(self) -> httpx2.Client:
        """A plain HTTP client on the Unix socket (base URL http://localhost)."""
        return httpx2.Client(transport=httpx2.HTTPTransport(uds=str(self.socket)),
                             base_url="http://localhost", timeout=120)  # fmt: skip

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        """Run the console script against this gateway's codex and folders."""
        return subprocess.run([str(SCRIPT), "--codex", str(self.codex), *args], env=self.env,
                              capture_output=True, text=True, timeout=300, check=False)  # fmt: skip

    def logged(self) -> list[dict[str, Any]]:
        """The gateway's JSON log lines."""
        return [json.loads(line) for line in self.log.read_text().splitlines()
                if line.startswith("{")]  # fmt: skip

    def signal(self, signum: int) -> None:
        self.process.send_signal(signum)

    def stop(self, timeout: float = 60) -> int:
        return terminate(self.process, timeout)


def _answers(path: Path) -> bool:
    try:
        transport = httpx2.HTTPTransport(uds=str(path))
        with httpx2.Client(transport=transport, timeout=5) as http:
            return http.get("http://localhost/health").status_code == 200
    except httpx2.TransportError:
        return False


def wait_for_socket(path: Path, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"the gateway exited {process.returncode}:\n{log.read_text()}")
        if _answers(path):  # the socket is bound before the app serves: wait for an answer
            return
        time.sleep(0.05)
    raise AssertionError(f"the gateway did not listen on {path}:\n{log.read_text()}")


StartGateway = Callable[..., RunningGateway]


def _limit_open_files(limits: tuple[int, int]) -> Callable[[], None]:
    def limit() -> None:  # runs in the child, between fork and exec
        resource.setrlimit(resource.RLIMIT_NOFILE, limits)

    return limit


@contextmanager
def gateway_starter(folder: Path) -> Iterator[StartGateway]:
    """Start gateways on codex folders under `folder`; SIGTERM them (and their engines) after.

    The fixture `start_gateway` is this on the test's tmp_path; a module-scoped
    fixture can use it on a folder of its own to share one gateway between tests.
    """
    started: list[RunningGateway] = []
    short = Path(tempfile.mkdtemp(prefix="ss-", dir="/tmp"))  # socket paths stay short

    key, key_id = new_key()
    harness_client = {"harness": {"admin": True, "keys": [{"id": key_id, "hash": hash_key(key)}]}}
    default_clients = {"clients": harness_client}

    def start(codex: Path, *args: str, env: dict[str, str] | None = None,
              clients: dict[str, Any] | None = default_clients, tcp: bool = True,
              open_files: tuple[int, int] | None = None, with_harness: bool = False,
              netns: str | None = None, tcp_host: str = "127.0.0.1", port: int | None = None,
              ) -> RunningGateway:  # fmt: skip
        """Start a gateway; `open_files` (soft, hard) is the RLIMIT_NOFILE it starts with.

        `with_harness` adds the harness's admin client (its key: `gateway.key`)
        to the given clients. `netns` runs it in that network namespace (`ip
        netns exec`), listening on `tcp_host` (a non-loopback one: --tcp-public);
        `port` picks its TCP port (a gateway started again on its old one).
        """
        runtime = short / f"run{len(started)}"
        clients_file = folder / "config" / "soulstone" / "clients.yaml"
        if clients is not None and with_harness:
            clients = {**clients, "clients": {**clients.get("clients", {}), **harness_client}}
        if clients is not None:
            clients_file.parent.mkdir(parents=True, exist_ok=True)
            clients_file.write_text(yaml.safe_dump(clients))
            clients_file.chmod(0o600)
        runtime.mkdir(mode=0o700)
        environ = {k: v for k, v in os.environ.items() if not k.startswith(("XDG_", "SOULSTONE_"))}
        environ |= {
            "XDG_STATE_HOME": str(folder / "state"), "XDG_RUNTIME_DIR": str(runtime),
            "XDG_CONFIG_HOME": str(folder / "config"), "SOULSTONE_DEFAULT_RUNTIME": "process",
            "XDG_DATA_HOME": str(folder / "data"), "XDG_CACHE_HOME": str(folder / "cache"),
            "SOULSTONE_TEST_SESSION": os.environ.get("SOULSTONE_TEST_SESSION", ""),
        }  # fmt: skip
        environ |= env or {}
        port = port or free_port()
        log = folder / f"gateway{len(started)}.log"
        prefix = ["ip", "netns", "exec", netns] if netns is not None else []
        public = ["--tcp-public"] if tcp and tcp_host != "127.0.0.1" else []
        process = subprocess.Popen(
            [*prefix, str(SCRIPT), "--codex", str(codex), "serve",
             *(["--tcp", f"{tcp_host}:{port}", *public] if tcp else []), *args],
            env=environ, stdout=log.open("wb"), stderr=subprocess.STDOUT,
            preexec_fn=None if open_files is None else _limit_open_files(open_files),
        )  # fmt: skip
        state = StateFolder(folder / "state" / "soulstone")
        api = runtime / "soulstone" / "api.sock"
        if "--socket" in args:
            api = Path(args[args.index("--socket") + 1])
        gateway = RunningGateway(process, api, port, codex, state, log, environ, key, tcp_host)
        started.append(gateway)
        wait_for_socket(gateway.socket, process, log)
        return gateway

    try:
        yield start
    finally:
        for gateway in started:
            gateway.stop()
            kill_recorded(gateway.state)
        shutil.rmtree(short, ignore_errors=True)


@pytest.fixture
def start_gateway(tmp_path: Path) -> Iterator[StartGateway]:
    """Start gateways on a codex folder; SIGTERM them (and kill their engines) afterwards."""
    with gateway_starter(tmp_path) as start:
        yield start


def fake_table(table: str, *flags: str, model: str, group: str | None = None,
               socket_path: Path | None = None, extra: str = "") -> str:  # fmt: skip
    """A codex table for the fake engine serving `model`."""
    port = free_port()
    address = ["--uds", str(socket_path)] if socket_path else ["--port", str(port)]
    command = [sys.executable, str(FAKE_ENGINE), "--model", model, *flags, *address]
    lines = [f"[{table}]", f"exec = {json.dumps(command)}",
             f'socket = "{socket_path}"' if socket_path else f"port = {port}",
             f'models = ["{model}"]',
             'health = { path = "/health", start_timeout = 30, interval = 0.05 }']  # fmt: skip
    if group:
        lines.append(f'groups = ["{group}"]')
    if extra:
        lines.append(extra)
    return "\n".join(lines) + "\n"


def fake_codex(folder: Path, *tables: str) -> Path:
    """Write a codex of fake engines."""
    return write(folder, {"fake.toml": "\n".join(tables)})


def table_port(table: str) -> int:
    """The TCP port of a fake engine's codex table (from fake_table or lora_table)."""
    return int(table.split("\nport = ")[1].split("\n")[0])


def lora_table(table: str, *flags: str, model: str, max_loras: int) -> str:
    """A vLLM-shaped fake engine whose adapters are loaded at run time (SPEC C7)."""
    return fake_table(table, *flags, model=model, extra=(
        'engine = "vllm"\nmodel_path = "/models/tiny-llama"\n'
        f"lora = {{ max_loras = {max_loras}, max_lora_rank = 8 }}"
    ))  # fmt: skip


def keyed(name: str, **extra: Any) -> tuple[str, dict[str, Any]]:
    """A new API key and the clients.yaml entry of a client that holds it (only its hash)."""
    key, ident = new_key()
    return key, {name: {"keys": [{"id": ident, "hash": hash_key(key)}], **extra}}


_REFUSALS = re.compile(r'^soulstone_refusals_total\{code="([^"]+)"\} (\S+)$', re.MULTILINE)


def refusal_counts(gateway: RunningGateway) -> dict[str, float]:
    """`soulstone_refusals_total` by code, read with the harness's admin key over TCP."""
    with gateway.tcp() as admin:
        answer = admin.get("/metrics")
    assert answer.status_code == 200, answer.text
    return {code: float(count) for code, count in _REFUSALS.findall(answer.text)}


def request_lines(gateway: RunningGateway, *request_ids: str,
                  wait_s: float = 15) -> dict[str, dict[str, Any]]:  # fmt: skip
    """The request-log line of each request id, waiting until all were written (or failing)."""
    deadline = time.monotonic() + wait_s
    while True:  # lines are written in batches a moment after the requests end
        lines = [line for line in gateway.logged() if line.get("event") == "request"]
        found = {line["request_id"]: line for line in lines if line["request_id"] in request_ids}
        if len(found) == len(request_ids) or time.monotonic() > deadline:
            missing = set(request_ids) - set(found)
            assert not missing, f"no request-log line for {sorted(missing)}"
            return found
        time.sleep(0.05)


def write_councils(folder: Path, text: str) -> Path:
    """A council folder holding one file, councils.toml, of this text."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "councils.toml").write_text(text)
    return folder


def fake_engine_calls(table: str) -> list[dict[str, Any]]:
    """The chat calls a fake engine received (`/fake/calls`; none when it never started)."""
    try:
        answer = httpx2.get(f"http://127.0.0.1:{table_port(table)}/fake/calls")
    except httpx2.ConnectError:
        return []
    return list(answer.json()["calls"])


def streamed_text(chunks: Any) -> tuple[str, Any]:
    """The text of an openai chat stream's deltas, and the usage its last chunk carried."""
    pieces, usage = [], None
    for chunk in chunks:
        if chunk.choices:
            pieces.append(chunk.choices[0].delta.content or "")
        if chunk.usage is not None:
            usage = chunk.usage
    return "".join(pieces), usage
