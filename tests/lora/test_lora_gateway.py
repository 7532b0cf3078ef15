"""The hot path with a fake vLLM-shaped engine: single-flight loads, prefetch, watch."""

from __future__ import annotations

import asyncio
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import httpx2

from gateway_harness import SCRIPT, RunningGateway, StartGateway, fake_codex, fake_table
from lora_helpers import write_adapter


def lora_gateway(
    tmp_path: Path, start_gateway: StartGateway, max_loras: int = 2
) -> tuple[RunningGateway, int]:
    table = fake_table("base", model="base", extra=(
        f'engine = "vllm"\nmodel_path = "/models/tiny-llama"\n'
        f"lora = {{ max_loras = {max_loras}, max_lora_rank = 8 }}"
    ))  # fmt: skip
    gateway = start_gateway(fake_codex(tmp_path / "c", table))
    port = int(table.split("\nport = ")[1].split("\n")[0])
    return gateway, port


def add(gateway: RunningGateway, name: str, folder: Path) -> None:
    result = gateway.cli("lora", "add", name, str(folder), "--base", "base")
    assert result.returncode == 0, result.stderr


def test_concurrent_first_requests_load_an_adapter_once(
    tmp_path: Path, start_gateway: StartGateway
) -> None:
    gateway, port = lora_gateway(tmp_path, start_gateway)
    add(gateway, "x", write_adapter(tmp_path / "x"))

    async def run() -> list[int]:
        connector = aiohttp.UnixConnector(path=str(gateway.socket))
        async with aiohttp.ClientSession(connector=connector) as session:

            async def one() -> int:
                body = {"model": "x", "messages": []}
                url = "http://localhost/v1/chat/completions"
                async with session.post(url, json=body) as response:
                    return response.status

            return list(await asyncio.gather(*(one() for _ in range(8))))

    assert asyncio.run(run()) == [200] * 8
    assert httpx2.get(f"http://127.0.0.1:{port}/fake/lora").json() == {"adapters": ["x"],
                                                                        "loads": 1}  # fmt: skip
    assert "soulstone_adapter_loads_total 1.0" in gateway.http().get("/metrics").text


def test_prefetch_learns_what_follows(tmp_path: Path, start_gateway: StartGateway) -> None:
    gateway, port = lora_gateway(tmp_path, start_gateway, max_loras=3)
    for name in ("a", "b", "c"):
        add(gateway, name, write_adapter(tmp_path / name))
    http = gateway.http()
    for name in ("a", "b", "a", "b", "a"):
        response = http.post("/v1/chat/completions", json={"model": name, "messages": []},
                             headers={"X-Conveyance-Session-ID": "trainer-session"})  # fmt: skip
        assert response.status_code == 200
    deadline = time.monotonic() + 10  # after the last `a`, `b` is predicted and loaded
    metrics = http.get("/metrics").text
    hits = re.search(r'soulstone_adapter_prefetch_total\{result="hit"\} (\S+)', metrics)
    assert hits is not None and float(hits.group(1)) >= 2
    while "b" not in httpx2.get(f"http://127.0.0.1:{port}/fake/lora").json()["adapters"]:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert "c" not in httpx2.get(f"http://127.0.0.1:{port}/fake/lora").json()["adapters"]


def test_watch_ingests_only_whole_adapters(tmp_path: Path, start_gateway: StartGateway) -> None:
    gateway, port = lora_gateway(tmp_path, start_gateway)
    assert gateway.http().post("/admin/up", json={"name": "base"}).status_code == 200
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    log = tmp_path / "watch.log"
    watcher = subprocess.Popen(
        [str(SCRIPT), "--codex", str(gateway.codex), "lora", "watch", str(inbox), "--base", "base",
         "--interval", "0.3"], env=gateway.env, stdout=log.open("wb"), stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        finished = write_adapter(tmp_path / "finished")
        slow = inbox / "slow-one"
        slow.mkdir()
        (slow / "adapter_config.json").write_bytes((finished / "adapter_config.json").read_bytes())
        weights = (finished / "adapter_model.safetensors").read_bytes()
        with (slow / "adapter_model.safetensors").open("wb") as sink:
            for start in range(0, len(weights), len(weights) // 4):
                sink.write(weights[start : start + len(weights) // 4])
                sink.flush()
                time.sleep(0.5)  # a slow trainer; pauses longer than the watch interval
        deadline = time.monotonic() + 20
        lora_url = f"http://127.0.0.1:{port}/fake/lora"
        while "slow-one" not in httpx2.get(lora_url).json()["adapters"]:
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        answer = gateway.http().post("/v1/chat/completions",
                                     json={"model": "slow-one", "messages": []})  # fmt: skip
        assert answer.status_code == 200
        bad = inbox / "broken"
        bad.mkdir()
        (bad / "adapter_config.json").write_text("{not json")
        (bad / "adapter_model.safetensors").write_bytes(weights)
        deadline = time.monotonic() + 10
        while "skipped broken" not in log.read_text():
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
    finally:
        watcher.send_signal(signal.SIGINT)
        watcher.wait(timeout=30)
    text = log.read_text()
    assert text.count("ingested slow-one") == 1
    listed = gateway.cli("lora", "list", "--json").stdout
    assert '"slow-one"' in listed and '"broken"' not in listed


def test_admin_add_refuses_bad_names_and_missing_fields(
    tmp_path: Path, start_gateway: StartGateway
) -> None:
    gateway, _ = lora_gateway(tmp_path, start_gateway)
    http = gateway.http()
    good = {"name": "x", "path": str(write_adapter(tmp_path / "x")), "base": "base"}
    cases = [
        ({k: v for k, v in good.items() if k != "name"}, "needs a name"),
        (good | {"name": "../../x"}, "not an adapter name"),
        (good | {"name": "base"}, "is a model [base] serves"),
        ({k: v for k, v in good.items() if k != "path"}, "needs `path`"),
        (good | {"path": "relative/x"}, "absolute path"),
        ({k: v for k, v in good.items() if k != "base"}, "needs `base`"),
    ]
    for body, words in cases:
        answer = http.post("/admin/lora/add", json=body)
        assert answer.status_code == 400, body
        assert words in answer.text, answer.text
    assert http.post("/admin/lora/add", json=good).status_code == 200
    again = http.post("/admin/lora/add", json=good)
    assert again.status_code == 400 and "exists" in again.text
    assert [a["name"] for a in http.get("/admin/lora").json()["adapters"]] == ["x"]
    assert http.post("/admin/lora/rm", json={}).status_code == 400
    assert http.post("/admin/lora/rm", json={"name": "x"}).status_code == 200
    assert http.get("/admin/lora").json()["adapters"] == []


def test_lora_add_through_a_gateway_imports_no_registry_no_codex_no_trainer(
    tmp_path: Path, start_gateway: StartGateway
) -> None:
    gateway, _ = lora_gateway(tmp_path, start_gateway)
    folder = write_adapter(tmp_path / "x")
    probe = (
        "import sys\n"
        "from soulstone.cli.app import app\n"
        "try:\n"
        f"    app(['--codex', {str(gateway.codex)!r}, 'lora', 'add', 'x', {str(folder)!r}, "
        "'--base', 'base'], prog_name='soulstone')\n"
        "except SystemExit:\n"
        "    pass\n"
        "heavy = ('ZODB', 'soulstone.lora.registry', 'soulstone.codex.models',\n"
        "         'soulstone.codex.load', 'soulstone.lora.train', 'rich.progress')\n"
        "print([m for m in heavy if m in sys.modules], file=sys.stderr)\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], env=gateway.env, capture_output=True,
                            text=True, timeout=120, check=False)  # fmt: skip
    assert "added x (rank 4, base base" in result.stdout, result.stderr
    assert result.stderr.strip().splitlines()[-1] == "[]"
    assert [a["name"] for a in gateway.http().get("/admin/lora").json()["adapters"]] == ["x"]
