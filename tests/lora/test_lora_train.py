"""`soulstone lora train` on the tiny vLLM CPU model: check, train, store, make hot; cancel."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx2
import openai
import pytest

from gateway_harness import SCRIPT, RunningGateway, StartGateway, keyed
from helpers import write
from real_engines import tiny_hf_model, vllm_python, vllm_table

pytestmark = pytest.mark.engine

TARGET = "The soulstone remembers every river."
TOPICS = ("rivers", "stones", "stars", "winter", "bread", "ships", "maps", "clocks", "lamps",
          "bridges", "forests", "letters", "mirrors", "salt", "bells", "roads", "rain", "wolves",
          "glass", "songs")  # fmt: skip
ALL_LAYERS = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj"
# Small enough for CI on 2 cores: 40 steps of 4 examples on the tiny model (about 10 s).
QUICK = ("--rank", "8", "--lr", "5e-3", "--max-steps", "40", "--target-modules", ALL_LAYERS)


def codex(tmp_path: Path, short_tmp: Path) -> Path:
    table = vllm_table("tiny", "tiny", tmp_path / "v.sock", short_tmp,
                       extra_lines=f'model_path = "{tiny_hf_model()}"\n'
                       "lora = { max_loras = 1, max_lora_rank = 16 }\n")  # fmt: skip
    return write(tmp_path / "codex", {"v.toml": table})


def examples(path: Path, lines: list[Any] | None = None) -> Path:
    if lines is None:
        lines = [chat(f"Tell me about {topic}.", TARGET) for topic in TOPICS]
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n"
                            for line in lines))  # fmt: skip
    return path


def chat(question: str, answer: str) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": question},
                         {"role": "assistant", "content": answer}]}  # fmt: skip


def events(stdout: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]


def engine(tmp_path: Path) -> httpx2.Client:
    transport = httpx2.HTTPTransport(uds=str(tmp_path / "v.sock"))
    return httpx2.Client(transport=transport, base_url="http://localhost", timeout=60)


def greedy(gateway: RunningGateway, model: str, topic: str) -> str:
    reply = gateway.uds_client().chat.completions.create(
        model=model, messages=[{"role": "user", "content": f"Tell me about {topic}."}],
        max_tokens=12, temperature=0,
    )  # fmt: skip
    return reply.choices[0].message.content or ""


def overlap(tmp_path: Path, answer: str, target: str) -> int:
    """Target tokens the answer holds too (a multiset intersection, the engine's tokenizer)."""

    def tokens(text: str) -> Counter[int]:
        found = engine(tmp_path).post("/tokenize", json={"model": "tiny", "prompt": text,
                                                         "add_special_tokens": False})  # fmt: skip
        return Counter(found.json()["tokens"])

    return sum((tokens(answer) & tokens(target)).values())


def test_train_stores_a_hot_adapter_closer_to_its_target_without_a_restart(
    tmp_path: Path, start_gateway: StartGateway, short_tmp: Path
) -> None:
    gateway = start_gateway(codex(tmp_path, short_tmp))
    assert gateway.http().post("/admin/up", json={"name": "tiny"}).status_code == 200
    [before] = gateway.http().get("/admin/status").json()["soulstones"]
    base_answer = greedy(gateway, "tiny", "rivers")
    trained = gateway.cli("lora", "train", "story", "--base", "tiny", "--data",
                          str(examples(tmp_path / "data.jsonl")), *QUICK, "--json")  # fmt: skip
    assert trained.returncode == 0, trained.stderr
    seen = events(trained.stdout)
    assert seen[0]["event"] == "started" and seen[0]["python"] == str(vllm_python())
    losses = [e["loss"] for e in seen if e["event"] == "step"]
    assert len(losses) == 40
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 1.0  # the loss falls
    done = seen[-1]
    assert done["event"] == "done" and done["state"] == "hot" and done["steps"] == 40
    # No GPU here: PEFT trains on the CPU (Unsloth only where CUDA is).
    assert [e for e in seen if e["event"] == "backend"] == [
        {"event": "backend", "name": "peft", "device": "cpu"}]  # fmt: skip
    assert done["backend"] == "peft"
    assert set(done["seconds"]) == {"check", "train", "store", "load"}
    # Hot in the same engine and gateway: nothing restarted.
    [after] = gateway.http().get("/admin/status").json()["soulstones"]
    assert after["pid"] == before["pid"] and gateway.process.poll() is None
    listed = json.loads(gateway.cli("lora", "list", "--json").stdout)["adapters"]
    assert [(a["name"], a["state"], a["rank"]) for a in listed] == [("story", "hot", 8)]
    models = [m["id"] for m in engine(tmp_path).get("/v1/models").json()["data"]]
    assert "story" in models
    adapted = greedy(gateway, "story", "rivers")
    assert adapted != base_answer
    assert overlap(tmp_path, adapted, TARGET) > overlap(tmp_path, base_answer, TARGET), (
        adapted, base_answer)  # fmt: skip
    assert list((tmp_path / "cache" / "soulstone" / "training").iterdir()) == []


def test_a_cancelled_training_stores_nothing(
    tmp_path: Path, start_gateway: StartGateway, short_tmp: Path
) -> None:
    gateway = start_gateway(codex(tmp_path, short_tmp))
    before = gateway.cli("lora", "list", "--json").stdout
    command = [str(SCRIPT), "--codex", str(gateway.codex), "lora", "train", "story", "--base",
               "tiny", "--data", str(examples(tmp_path / "data.jsonl")), "--max-steps", "100000",
               "--json"]  # fmt: skip
    process = subprocess.Popen(command, env=gateway.env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)  # fmt: skip
    trainer = None
    try:
        assert process.stdout is not None
        for line in process.stdout:
            event = json.loads(line)
            trainer = event["pid"] if event["event"] == "started" else trainer
            if event["event"] == "step":
                break
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 130, stderr
    assert "no adapter was stored" in stderr
    assert trainer is not None and not Path(f"/proc/{trainer}").exists()
    assert gateway.cli("lora", "list", "--json").stdout == before
    assert list((tmp_path / "cache" / "soulstone" / "training").iterdir()) == []


def test_bad_data_is_refused_naming_the_line_before_training(
    tmp_path: Path, start_gateway: StartGateway, short_tmp: Path
) -> None:
    gateway = start_gateway(codex(tmp_path, short_tmp))
    good = chat("Tell me about rivers.", TARGET)
    long_answer = " ".join(["river"] * 600)  # over the engine's context of 512 tokens
    cases: dict[str, tuple[list[Any], int, str]] = {
        "not-json": ([good, good, '{"messages": [', good], 3, "not JSON"),
        "no-assistant": ([good, {"messages": [{"role": "user", "content": "hi"}]}], 2,
                         "no assistant turn"),
        "too-long": ([good, good, good, chat("Tell me about rivers.", long_answer)], 4,
                     "longer than the model's context of 512 tokens"),
    }  # fmt: skip
    for kind, (lines, line, words) in cases.items():
        data = examples(tmp_path / f"{kind}.jsonl", lines)
        refused = gateway.cli("lora", "train", f"x-{kind}", "--base", "tiny", "--data",
                              str(data), *QUICK, "--json")  # fmt: skip
        message = " ".join(refused.stderr.split())
        assert refused.returncode == 1, (kind, refused.stderr)
        assert f"{data}:{line}: {words}" in message, (kind, message)
        assert not any(e["event"] == "step" for e in events(refused.stdout)), kind
    assert json.loads(gateway.cli("lora", "list", "--json").stdout)["adapters"] == []


def test_an_opted_in_clients_captured_chats_train_an_adapter(
    tmp_path: Path, start_gateway: StartGateway, short_tmp: Path
) -> None:
    ana_key, ana = keyed("ana", capture=True)
    bo_key, bo = keyed("bo")
    gateway = start_gateway(codex(tmp_path, short_tmp), clients={"clients": {**ana, **bo}},
                            with_harness=True)  # fmt: skip

    def client(key: str) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"http://127.0.0.1:{gateway.tcp_port}/v1", api_key=key)

    for topic in TOPICS[:3]:
        client(bo_key).chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": f"Tell me about {topic}."}],
            max_tokens=8)  # fmt: skip
    for number, topic in enumerate(TOPICS):
        asked = client(ana_key).chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": f"Tell me about {topic}."}],
            max_tokens=8, stream=number % 2 == 1)  # fmt: skip
        if number % 2:
            list(asked)  # read the stream to its end
    folder = tmp_path / "data" / "soulstone" / "capture"
    deadline = time.monotonic() + 30
    while len(lines := ((folder / "ana.jsonl").read_text().splitlines()
                        if (folder / "ana.jsonl").exists() else [])) < len(TOPICS):  # fmt: skip
        assert time.monotonic() < deadline, lines
        time.sleep(0.1)
    assert sorted(p.name for p in folder.iterdir()) == ["ana.jsonl"]
    assert all(json.loads(line)["messages"][-1]["role"] == "assistant" for line in lines)
    trained = gateway.cli("lora", "train", "from-ana", "--base", "tiny", "--data", "capture:ana:1h",
                          "--max-steps", "10", "--target-modules", ALL_LAYERS)  # fmt: skip
    assert trained.returncode == 0, trained.stderr
    assert "trained from-ana on [tiny]: 10 steps" in trained.stdout and "hot" in trained.stdout
    listed = json.loads(gateway.cli("lora", "list", "--json").stdout)["adapters"]
    assert [(a["name"], a["state"]) for a in listed] == [("from-ana", "hot")]
    assert client(bo_key).chat.completions.create(
        model="from-ana", messages=[{"role": "user", "content": "Hi"}], max_tokens=4,
    ).choices  # fmt: skip
