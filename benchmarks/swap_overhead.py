"""What a swap adds to the engine's own start: first token through the gateway vs a bare start.

    .venv/bin/python benchmarks/swap_overhead.py [--rounds 5] [--engines fake,llama]
        [--slow-start 2.0] [--before GIT_REF] [--smoke]

For each engine kind (the tests' fake engine with `--slow-start S`, and the
tiny llama-server that scripts/build-llama-server builds), one round measures:

- `direct`: the engine command soulstone would run, started by hand, its
  health path polled every 2 ms: spawn to first HTTP 200;
- `cold`: nothing runs; a streamed request for soulstone `a` through
  `soulstone serve` (Unix socket): send to first token;
- `swap`: `a` runs; a streamed request for `b` (another group: `a` must stop
  first): send to first token.

Added = case − direct of the same round; the target is ≤ 5 % of direct + 50 ms.
With `--before REF`, the gateway of that commit (its `src/` exported with
`git archive`) runs in the same run, on its own ports, its cases interleaved
with this checkout's round by round. The fake engine with `sleep = true` on
`a` (`--sleep`) adds `sleep-swap` (`b` runs, `a` sleeps: request `a`) for this
checkout: the swap becomes a POST /wake_up. Each case's gateway log gives a
timeline (stop, launch, healthy, first token) for the report. Results go to
benchmarks/results/swap_overhead.json; `--smoke` runs one short round.
"""

from __future__ import annotations

import argparse
import datetime
import http.client
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from soulstone.demo.artifacts import build_cache, ensure_tiny_gguf, llama_server_path

ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
SOULSTONE = Path(PYTHON).parent / "soulstone"
FAKE = ROOT / "tests" / "fakes" / "fake_engine.py"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class UnixHTTP(http.client.HTTPConnection):
    """http.client over a Unix socket."""

    def __init__(self, path: str, timeout: float = 300) -> None:
        super().__init__("localhost", timeout=timeout)
        self.path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.path)


def admin(path: str, verb: str, body: dict[str, Any]) -> dict[str, Any]:
    connection = UnixHTTP(path)
    connection.request("POST", f"/admin/{verb}", json.dumps(body),
                       {"Content-Type": "application/json"})  # fmt: skip
    response = connection.getresponse()
    document: dict[str, Any] = json.loads(response.read() or b"{}")
    connection.close()
    if response.status != 200:
        raise RuntimeError(f"/admin/{verb}: {response.status} {document}")
    return document


def first_token(path: str, model: str) -> float:
    """Seconds from sending a streamed chat request to its first content chunk."""
    body = json.dumps({"model": model, "messages": [{"role": "user", "content": "hi"}],
                       "max_tokens": 4, "stream": True})  # fmt: skip
    connection = UnixHTTP(path)
    began = time.monotonic()
    connection.request("POST", "/v1/chat/completions", body, {"Content-Type": "application/json"})
    response = connection.getresponse()
    if response.status != 200:
        raise RuntimeError(f"{model}: {response.status} {response.read()[:500]!r}")
    while True:
        line = response.readline()
        if not line:
            raise RuntimeError(f"{model}: the stream ended before a token")
        if line.startswith(b"data: {") and b'"content"' in line:
            took = time.monotonic() - began
            break
    response.read()
    connection.close()
    return took


def healthy_once(port: int, health: str) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
            sock.sendall(f"GET {health} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
            return sock.recv(64).startswith(b"HTTP/1.1 200")
    except OSError:
        return False


def direct_start(argv: list[str], port: int, health: str, log: Path) -> float:
    """Seconds from spawning the engine to its first HTTP 200 on the health path."""
    with log.open("ab") as out:
        began = time.monotonic()
        env = os.environ | {"HF_HUB_OFFLINE": "1"}
        engine = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,
                                  start_new_session=True, env=env)  # fmt: skip
        try:
            while not healthy_once(port, health):
                if engine.poll() is not None:
                    raise RuntimeError(f"{argv[0]} exited {engine.returncode}: see {log}")
                time.sleep(0.002)
            return time.monotonic() - began
        finally:
            os.killpg(engine.pid, signal.SIGTERM)
            try:
                engine.wait(10)
            except subprocess.TimeoutExpired:  # llama-server may miss a TERM this early
                os.killpg(engine.pid, signal.SIGKILL)
                engine.wait(60)


def engine_exec(kind: str, slow_start: float, port: int) -> list[str]:
    if kind == "fake":
        return [PYTHON, str(FAKE), "--port", str(port), "--slow-start", str(slow_start)]
    server = llama_server_path(build_cache())
    model = ensure_tiny_gguf(build_cache())
    return [str(server), "-m", str(model), "-c", "512", "-t", "1", "--no-warmup"]


def write_codex(folder: Path, kind: str, slow_start: float, sleep: bool) -> dict[str, Any]:
    """Two soulstones in two groups (`a`, `b`); returns their ports and the direct argv."""
    folder.mkdir(parents=True)
    ports = {"a": free_port(), "b": free_port()}
    tables = []
    for name, port in ports.items():
        argv = engine_exec(kind, slow_start, port)
        extra = ""
        if kind == "fake" and sleep and name == "a":
            extra = 'engine = "vllm"\nsleep = true\n'  # the fake takes vLLM's options
        tables.append(f'[{name}]\nexec = {json.dumps(argv)}\nport = {port}\n'
                      f'models = ["m-{name}"]\ngroups = ["g{name}"]\n{extra}')  # fmt: skip
    (folder / "swap.toml").write_text("\n".join(tables))
    direct = engine_exec(kind, slow_start, ports["a"])
    if kind == "llama":  # what soulstone derives for llama-server
        direct += ["--port", str(ports["a"]), "--alias", "m-a", "--metrics"]
    return {"ports": ports, "direct": direct}


def export_source(ref: str, into: Path) -> Path:
    into.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", ref, "src"], check=True,
                             capture_output=True).stdout  # fmt: skip
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into / "src"


def wait_listening(path: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            connection = UnixHTTP(path, timeout=2)
            connection.request("GET", "/health")
            if connection.getresponse().status == 200:
                return
        except OSError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"no gateway on {path}")


def start_gateway(work: Path, codex: Path, source: Path) -> tuple[subprocess.Popen[bytes], str]:
    socket_path = str(work / "gw.sock")
    env = os.environ | {"XDG_STATE_HOME": str(work / "state"), "XDG_RUNTIME_DIR": str(work),
                        "XDG_CONFIG_HOME": str(work / "config"), "PYTHONPATH": str(source),
                        "SOULSTONE_DEFAULT_RUNTIME": "process"}  # fmt: skip
    log = (work / "gateway.log").open("wb")
    serve = [str(SOULSTONE), "--codex", str(codex), "serve", "--socket", socket_path,
             "--max-wait", "0"]  # fmt: skip
    gateway = subprocess.Popen(serve, env=env, stdout=subprocess.DEVNULL, stderr=log)
    wait_listening(socket_path)
    return gateway, socket_path


def timeline(log: Path, since: datetime.datetime, began: float) -> dict[str, float]:
    """Milliseconds from the request to each supervisor event logged after `since`."""
    marks: dict[str, float] = {}
    for line in log.read_text().splitlines():
        if not line.startswith("{"):
            continue
        entry = json.loads(line)
        if "timestamp" not in entry:
            continue
        at = datetime.datetime.fromisoformat(entry["timestamp"])
        if at < since or entry["event"] not in (
            "stopping",
            "stopped",
            "starting",
            "healthy",
            "sleeping",
            "asleep",
            "waking",
            "awake",
        ):
            continue
        key = f"{entry['event']} {entry.get('soulstone', '').removeprefix('swap.')}"
        marks.setdefault(key, round((at - since).total_seconds() * 1000, 1))
        if entry.get("seconds") is not None:
            marks.setdefault(f"{key} (s)", entry["seconds"])
    return marks


def case(gateway: dict[str, Any], model: str) -> dict[str, Any]:
    since = datetime.datetime.now(datetime.UTC)
    began = time.monotonic()
    took = first_token(gateway["socket"], model)
    time.sleep(0.05)  # the log line of the last event reaches the file
    return {"seconds": took, "timeline": timeline(gateway["log"], since, began)}


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    keys = sorted({(r["engine"], r["version"], r["case"]) for r in rows})
    for engine, version, name in keys:
        picked = [
            r for r in rows if (r["engine"], r["version"], r["case"]) == (engine, version, name)
        ]
        added = [r["added_ms"] for r in picked]
        direct = [r["direct_ms"] for r in picked]
        out[f"{engine} {version} {name}"] = {
            "n": len(picked),
            "direct_ms_median": round(statistics.median(direct), 1),
            "case_ms_median": round(statistics.median(r["seconds"] * 1000 for r in picked), 1),
            "added_ms_median": round(statistics.median(added), 1),
            "added_ms_max": round(max(added), 1),
            "target_ms": round(0.05 * statistics.median(direct) + 50, 1),
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--engines", default="fake,llama")
    parser.add_argument("--slow-start", type=float, default=2.0)
    parser.add_argument("--before", metavar="GIT_REF")
    parser.add_argument("--sleep", action="store_true", help="also time a sleep-mode swap (fake)")
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    rounds = 1 if args.smoke else args.rounds
    work = Path(tempfile.mkdtemp(prefix="swapb-", dir="/tmp"))
    versions = {"after": ROOT / "src"}
    if args.before:
        versions["before"] = export_source(args.before, work / "before")
    rows: list[dict[str, Any]] = []
    processes: list[subprocess.Popen[bytes]] = []
    try:
        for kind in args.engines.split(","):
            gateways: dict[str, dict[str, Any]] = {}
            for version, source in versions.items():
                folder = work / kind / version
                sleep = args.sleep and kind == "fake" and version == "after"
                codex = write_codex(folder / "codex", kind, args.slow_start, sleep)
                process, path = start_gateway(folder, folder / "codex", source)
                processes.append(process)
                gateways[version] = codex | {"socket": path, "log": folder / "gateway.log",
                                             "sleep": sleep}  # fmt: skip
            for number in range(rounds):
                for version, gateway in gateways.items():
                    admin(gateway["socket"], "down", {})
                    direct = direct_start(gateway["direct"], gateway["ports"]["a"], "/health",
                                          work / f"direct-{kind}.log")  # fmt: skip
                    names = ["cold", "swap"] + (["sleep-swap"] if gateway["sleep"] else [])
                    models = {"cold": "m-a", "swap": "m-b", "sleep-swap": "m-a"}
                    for name in names:
                        result = case(gateway, models[name])
                        rows.append({"engine": kind, "version": version, "round": number,
                                     "case": name, "direct_ms": round(direct * 1000, 1),
                                     "added_ms": round((result["seconds"] - direct) * 1000, 1),
                                     **result})  # fmt: skip
                        print(json.dumps(rows[-1]), flush=True)
                    admin(gateway["socket"], "down", {})
    finally:
        for process in reversed(processes):
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                process.kill()
    summary = summarise(rows)
    print(json.dumps(summary, indent=2))
    if not args.smoke:
        args.out.mkdir(parents=True, exist_ok=True)
        document = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
                    "slow_start_s": args.slow_start, "before": args.before,
                    "summary": summary, "rows": rows}  # fmt: skip
        (args.out / "swap_overhead.json").write_text(json.dumps(document, indent=1))


if __name__ == "__main__":
    main()
