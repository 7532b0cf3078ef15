"""Adapters cold -> warm -> hot by name on a real vLLM CPU engine, through the gateway."""

from __future__ import annotations

import json
import re
import subprocess
import threading
from pathlib import Path

import httpx2
import pytest
from openai.types.chat import ChatCompletionMessageParam

from gateway_harness import SCRIPT, RunningGateway, StartGateway
from helpers import write
from lora_helpers import write_adapter
from real_engines import tiny_hf_model, vllm_table

pytestmark = pytest.mark.engine

MESSAGES: list[ChatCompletionMessageParam] = [
    {"role": "user", "content": "Tell me a story about a stone."}
]


def vllm_codex(tmp_path: Path, short_tmp: Path, extra_args: tuple[str, ...] = ()) -> Path:
    """The tiny vLLM engine with only a `lora` table: no LoRA flag in exec, no variable in env."""
    table = vllm_table(
        "tiny", "tiny", tmp_path / "v.sock", short_tmp, extra_args=extra_args,
        extra_lines=f'model_path = "{tiny_hf_model()}"\n'
        "lora = { max_loras = 1, max_lora_rank = 16 }\n",
    )  # fmt: skip
    return write(tmp_path / "codex", {"v.toml": table})


def engine_process(gateway: RunningGateway) -> tuple[list[str], dict[str, str]]:
    """The running engine's command line and environment, read from /proc."""
    [found] = gateway.http().get("/admin/status").json()["soulstones"]
    pid = found["pid"]
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[:-1]
    pairs = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")[:-1]
    env = dict(pair.decode().split("=", 1) for pair in pairs)
    return [word.decode() for word in argv], env


def engine_adapters(tmp_path: Path) -> list[str]:
    engine = httpx2.Client(transport=httpx2.HTTPTransport(uds=str(tmp_path / "v.sock")))
    models = engine.get("http://localhost/v1/models").json()["data"]
    return [m["id"] for m in models if m["id"] != "tiny"]


def greedy(gateway: RunningGateway, model: str) -> str:
    reply = gateway.uds_client().chat.completions.create(
        model=model,
        messages=MESSAGES,
        max_tokens=8,
        temperature=0,
    )
    return reply.choices[0].message.content or ""


def test_adapters_by_name_evicted_lru_waiting_for_a_busy_slot(
    tmp_path: Path, start_gateway: StartGateway, short_tmp: Path
) -> None:
    adapters = tiny_hf_model().parent
    gateway = start_gateway(vllm_codex(tmp_path, short_tmp))
    for name, folder in (("story-a", "lora-a"), ("story-b", "lora-b")):
        added = gateway.cli("lora", "add", name, str(adapters / folder), "--base", "tiny")
        assert added.returncode == 0, added.stderr
    listed = {m["id"]: m for m in gateway.http().get("/v1/models").json()["data"]}
    assert listed["story-a"]["parent"] == "tiny" and listed["story-a"]["state"] == "cold"
    assert gateway.http().post("/admin/up", json={"name": "tiny"}).status_code == 200
    argv, env = engine_process(gateway)  # what the `lora` table means, derived by soulstone
    assert argv[-5:] == ["--enable-lora", "--max-loras", "1", "--max-lora-rank", "16"]
    assert env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "True"

    base, first, second = (
        greedy(gateway, "tiny"),
        greedy(gateway, "story-a"),
        greedy(gateway, "story-b"),
    )
    assert len({base, first, second}) == 3, (base, first, second)
    assert engine_adapters(tmp_path) == ["story-b"]  # max_loras = 1: story-a was evicted
    for name in ("story-a", "story-b", "story-a"):
        assert greedy(gateway, name) == (first if name == "story-a" else second)
        assert engine_adapters(tmp_path) == [name]
    states = json.loads(gateway.cli("lora", "list", "--json").stdout)["adapters"]
    assert {a["name"]: a["state"] for a in states} == {"story-a": "hot", "story-b": "warm"}

    # max_loras = 1: while a stream holds story-a, a request for story-b waits for the
    # slot (it never breaks the stream), then loads story-b and answers: both succeed.
    streamed: list[str] = []

    def stream() -> None:
        body = {"model": "story-a", "messages": MESSAGES, "max_tokens": 400, "stream": True,
                "temperature": 0, "ignore_eos": True}  # fmt: skip
        with gateway.http().stream("POST", "/v1/chat/completions", json=body) as response:
            streamed.extend(line for line in response.iter_lines() if line)

    reader = threading.Thread(target=stream)
    reader.start()
    while not streamed and reader.is_alive():
        reader.join(0.01)
    body = {"model": "story-b", "messages": MESSAGES, "max_tokens": 2}
    other = gateway.http().post("/v1/chat/completions", json=body)
    reader.join(120)
    assert streamed[-1] == "data: [DONE]"
    assert not any('"error"' in line for line in streamed)
    assert other.status_code == 200, other.text
    metrics = gateway.http().get("/metrics").text
    waits = re.search(r"^soulstone_adapter_slot_waits_total (\S+)$", metrics, re.MULTILINE)
    assert waits is not None and float(waits.group(1)) == 1  # story-b waited for story-a's slot
    assert engine_adapters(tmp_path) == ["story-b"]


def test_check_warns_on_a_contradicting_exec_and_the_table_wins(
    tmp_path: Path, start_gateway: StartGateway, short_tmp: Path
) -> None:
    codex = vllm_codex(tmp_path, short_tmp, extra_args=("--max-loras", "4", "--enable-lora"))
    checked = subprocess.run([str(SCRIPT), "--codex", str(codex), "check"], capture_output=True,
                             text=True, timeout=120, check=False)  # fmt: skip
    assert checked.returncode == 0, checked.stderr
    warning = " ".join(checked.stderr.split())
    assert "v.toml" in warning and "[tiny]" in warning and "exec" in warning
    assert "--max-loras 4" in warning and "--max-loras 1" in warning
    gateway = start_gateway(codex)
    assert gateway.http().post("/admin/up", json={"name": "tiny"}).status_code == 200
    argv, _ = engine_process(gateway)
    assert "4" not in argv and argv[-5:] == ["--enable-lora", "--max-loras", "1",
                                             "--max-lora-rank", "16"]  # fmt: skip


def test_bad_adapters_never_reach_the_engine(
    tmp_path: Path, start_gateway: StartGateway, short_tmp: Path
) -> None:
    gateway = start_gateway(vllm_codex(tmp_path, short_tmp))
    http = gateway.http()
    assert http.post("/admin/up", json={"name": "tiny"}).status_code == 200
    model = tiny_hf_model()
    truncated = write_adapter(tmp_path / "truncated", base=model.name)
    weights = truncated / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:64])
    no_config = write_adapter(tmp_path / "no-config", base=model.name)
    (no_config / "adapter_config.json").unlink()
    cases = {
        "rank": (write_adapter(tmp_path / "rank", rank=32, base=model.name), "rank 32"),
        # rank 8 (allowed) on layers far wider than the model's: 2 MiB, over one slot's 0.27 MiB
        "memory": (
            write_adapter(tmp_path / "memory", rank=8, base=model.name, hidden=16384),
            "memory needs about 2.00 MiB of device memory",
        ),
        "embed": (model.parent / "lora-embed", "embed_tokens"),
        "base": (write_adapter(tmp_path / "base", base="someone/else"), "base model"),
        "truncated": (truncated, "not a readable safetensors file"),
        "config": (no_config, "adapter_config.json: missing"),
    }
    for name, (folder, words) in cases.items():
        answer = http.post("/admin/lora/add",
                           json={"name": name, "path": str(folder), "base": "tiny"})  # fmt: skip
        assert answer.status_code == 400, name
        assert (
            answer.json()["error"]["code"] == "ADAPTER_REFUSED"
            and words in answer.json()["error"]["message"]
        )
        health = httpx2.Client(transport=httpx2.HTTPTransport(uds=str(tmp_path / "v.sock")))
        assert health.get("http://localhost/health").status_code == 200
    assert json.loads(gateway.cli("lora", "list", "--json").stdout)["adapters"] == []


def test_watch_makes_a_slowly_written_adapter_hot(
    tmp_path: Path, start_gateway: StartGateway, short_tmp: Path
) -> None:
    import signal
    import time

    gateway = start_gateway(vllm_codex(tmp_path, short_tmp))
    assert gateway.http().post("/admin/up", json={"name": "tiny"}).status_code == 200
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    log = tmp_path / "watch.log"
    watcher = subprocess.Popen(
        [str(SCRIPT), "--codex", str(gateway.codex), "lora", "watch", str(inbox), "--base",
         "tiny", "--interval", "0.3"], env=gateway.env, stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        source = tiny_hf_model().parent / "lora-b"
        target = inbox / "fresh"
        target.mkdir()
        (target / "adapter_config.json").write_bytes((source / "adapter_config.json").read_bytes())
        weights = (source / "adapter_model.safetensors").read_bytes()
        with (target / "adapter_model.safetensors").open("wb") as sink:
            step = len(weights) // 3
            for start in range(0, len(weights), step):
                sink.write(weights[start : start + step])
                sink.flush()
                time.sleep(0.6)  # the trainer pauses longer than the watch interval
        deadline = time.monotonic() + 60
        while "fresh" not in engine_adapters(tmp_path):
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        assert greedy(gateway, "fresh")  # usable by name, no restart
    finally:
        watcher.send_signal(signal.SIGINT)
        watcher.wait(timeout=30)
    assert log.read_text().count("ingested fresh") == 1
