"""What soulstone's gateway adds in front of an engine, measured beside its peers in one run.

    .venv/bin/python benchmarks/gateway_overhead.py [--bench-dir ../shared/bench] [--repeat 3]
        [--before GIT_REF] [--smoke]

The engine is `upstream_stub.py` and the client `loadgen.py` from the shared
bench folder. Paths: direct (TCP, Unix socket), the minimal aiohttp
pass-through (TCP, UDS->UDS), and soulstone's gateway (TCP, UDS->UDS), each
at concurrency 1, 16 and 64, streamed and not. Servers (stubs, proxies,
gateway) are pinned to CPU 0, the client to CPU 1. Proxy CPU per request is
read from /proc for the proxy's process during the measured phase. Results
go to benchmarks/results/gateway_overhead.json and a table to
benchmarks/results/gateway_overhead.md. With `--before REF`, the gateway of
that commit (its `src/` exported with `git archive`) runs in the same run,
on its own copy of the stub engines, as two more paths: a change is measured
against what it replaced. `--smoke` sends a few dozen requests per path and
concurrency instead of thousands (CI runs it so the script never rots; its
figures mean nothing).
"""

from __future__ import annotations

import argparse
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
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from soulstone.guard.keys import new_key

ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
SOULSTONE = Path(PYTHON).parent / "soulstone"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
REQUESTS = {1: 2000, 16: 6000, 64: 6000}
SMOKE_REQUESTS = {1: 20, 16: 32, 64: 64}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process and its reaped children, in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def wait_listening(address: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        family = socket.AF_UNIX if address.startswith("/") else socket.AF_INET
        with socket.socket(family) as probe:
            try:
                if family == socket.AF_UNIX:
                    probe.connect(address)
                else:
                    host, port = address.rsplit(":", 1)
                    probe.connect((host, int(port)))
                return
            except OSError:
                time.sleep(0.05)
    raise SystemExit(f"nothing listens on {address}")


def pinned(cpu: int, command: list[str], **options: Any) -> subprocess.Popen[bytes]:
    return subprocess.Popen(["taskset", "-c", str(cpu), *command], **options)


def loadgen(bench: Path, target: dict[str, str], concurrency: int, stream: bool,
            model: str) -> dict[str, Any]:  # fmt: skip
    where = ["--socket", target["socket"]] if "socket" in target else ["--url", target["url"]]
    if "key" in target:
        where += ["--header", f"Authorization:Bearer {target['key']}"]
    command = ["taskset", "-c", "1", PYTHON, str(bench / "loadgen.py"), *where,
               "--model", model, "--concurrency", str(concurrency),
               "--requests", str(REQUESTS[concurrency]), "--duration-max", "120"]  # fmt: skip
    if stream:
        command.append("--stream")
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    return dict(json.loads(result.stdout))


def measure(bench: Path, target: dict[str, str], concurrency: int, stream: bool, model: str,
            proxy_pid: int | None) -> dict[str, Any]:  # fmt: skip
    before = cpu_seconds(proxy_pid) if proxy_pid else 0.0
    run = loadgen(bench, target, concurrency, stream, model)
    after = cpu_seconds(proxy_pid) if proxy_pid else 0.0
    warmup = max(4, concurrency)
    total = run["requests"] + warmup
    run["proxy_cpu_us_per_req"] = (after - before) * 1e6 / total if proxy_pid else None
    return run


def scrypt_hash(key: str) -> str:
    """A key stored the way every soulstone version verifies it (`scrypt:`)."""
    import base64
    import hashlib

    salt = os.urandom(16)
    digest = hashlib.scrypt(key.encode(), salt=salt, n=2**14, r=8, p=1, dklen=32)

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).decode().rstrip("=")

    return f"scrypt:16384:8:1:{b64(salt)}:{b64(digest)}"


def export_source(ref: str, into: Path) -> Path:
    """The `src/` folder of a commit, exported into a folder (for the `before` gateway)."""
    into.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", ref, "src"], check=True,
                             capture_output=True).stdout  # fmt: skip
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into / "src"


def write_codex(folder: Path, bench: Path, port: int, socket_path: str) -> Path:
    """A codex of two stub engines (TCP `stub`, Unix socket `stub-uds`)."""
    folder.mkdir(parents=True)
    stub = [PYTHON, str(bench / "upstream_stub.py"), "--tokens", "16"]
    tcp_stub = json.dumps([*stub, "--port", str(port), "--model", "stub"])
    uds_stub = json.dumps([*stub, "--socket", socket_path, "--model", "stub-uds"])
    (folder / "bench.toml").write_text(
        f'[bench.stub-tcp]\nexec = {tcp_stub}\nport = {port}\nmodels = ["stub"]\n'
        'health = { path = "/health" }\n'
        f'[bench.stub-uds]\nexec = {uds_stub}\nsocket = "{socket_path}"\n'
        'models = ["stub-uds"]\nhealth = { path = "/health" }\n'
    )
    return folder


def start_gateway(work: Path, codex: Path, key: str, source: Path | None = None,
                  extra: Sequence[str] = (),
                  ) -> tuple[subprocess.Popen[bytes], str, int]:  # fmt: skip
    """A gateway (this checkout's, or the one in `source`) on its own socket and port.

    `extra`: more `soulstone serve` arguments (e.g. `--otlp-endpoint URL`).
    """
    port = free_port()
    socket_path = str(work / "gw" / "api.sock")
    env = os.environ | {"XDG_STATE_HOME": str(work / "state"), "XDG_RUNTIME_DIR": str(work),
                        "XDG_CONFIG_HOME": str(work / "config"),
                        "SOULSTONE_DEFAULT_RUNTIME": "process"}  # fmt: skip
    if source is not None:
        env["PYTHONPATH"] = str(source)
    # Identity on: TCP callers send a key (checked once per process); the Unix socket
    # caller is this user, the gateway's owner. Limits generous enough not to refuse.
    clients = work / "config" / "soulstone" / "clients.yaml"
    clients.parent.mkdir(parents=True)
    limits = {"requests_per_minute": 10**9, "tokens_per_minute": 10**12, "concurrent": 1000}
    key_id = key.split("-")[1]
    clients.write_text(json.dumps({"gateway": {"max_parallel": 256, "queue": 1024},
                                   "clients": {"bench": {"keys": [{"id": key_id,
                                                                   "hash": scrypt_hash(key)}],
                                                         "limits": limits}}}))  # fmt: skip
    clients.chmod(0o600)
    serve = [str(SOULSTONE), "--codex", str(codex), "serve", "--socket", socket_path,
             "--tcp", f"127.0.0.1:{port}", *extra]  # fmt: skip
    log = (work / "gateway.log").open("wb")
    gateway = pinned(0, serve, env=env, stdout=subprocess.DEVNULL, stderr=log)
    wait_listening(socket_path)
    subprocess.run(["curl", "-s", "--unix-socket", socket_path, "-X", "POST",
                    "http://localhost/admin/up", "-d", '{"name": "bench"}'],
                   check=True, capture_output=True, timeout=120)  # fmt: skip
    return gateway, socket_path, port


def stop_all(processes: list[subprocess.Popen[bytes]]) -> None:
    """SIGTERM each process, last started first; kill any that outlives a minute."""
    for process in reversed(processes):
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--bench-dir", type=Path, default=ROOT.parent / "shared" / "bench")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument(
        "--before",
        metavar="GIT_REF",
        help="also measure the gateway of this commit, in the same run",
    )
    parser.add_argument("--smoke", action="store_true", help="a few requests per path only")
    args = parser.parse_args()
    if args.smoke:
        REQUESTS.update(SMOKE_REQUESTS)
    bench = args.bench_dir
    work = Path(tempfile.mkdtemp(prefix="ss-bench-", dir="/tmp"))
    stub_port, proxy_port = free_port(), free_port()
    stub_socket, proxy_socket = str(work / "stub.sock"), str(work / "proxy.sock")
    codex = write_codex(work / "codex", bench, stub_port, stub_socket)
    key, _key_id = new_key()
    processes: list[subprocess.Popen[bytes]] = []
    try:
        gateway, gateway_socket, gateway_port = start_gateway(work / "now", codex, key)
        processes.append(gateway)
        proxies = (
            ["--port", str(proxy_port), "--upstream-url", f"http://127.0.0.1:{stub_port}"],
            ["--socket", proxy_socket, "--upstream-socket", stub_socket],
        )
        for proxy_args in proxies:
            processes.append(pinned(0, [PYTHON, str(ROOT / "benchmarks" / "minimal_proxy.py"),
                                        *proxy_args], stdout=subprocess.DEVNULL))  # fmt: skip
        wait_listening(f"127.0.0.1:{proxy_port}")
        wait_listening(proxy_socket)
        paths = [
            ("direct TCP", {"url": f"http://127.0.0.1:{stub_port}"}, "stub", None),
            ("direct UDS", {"socket": stub_socket}, "stub-uds", None),
            ("minimal aiohttp proxy, TCP", {"url": f"http://127.0.0.1:{proxy_port}"}, "stub",
             processes[1].pid),
            ("minimal aiohttp proxy, UDS->UDS", {"socket": proxy_socket}, "stub-uds",
             processes[2].pid),
            ("soulstone gateway, TCP", {"url": f"http://127.0.0.1:{gateway_port}", "key": key},
             "stub", gateway.pid),
            ("soulstone gateway, UDS->UDS", {"socket": gateway_socket}, "stub-uds", gateway.pid),
        ]  # fmt: skip
        if args.before:
            source = export_source(args.before, work / "before-src")
            old_codex = write_codex(work / "before-codex", bench, free_port(),
                                    str(work / "stub-before.sock"))  # fmt: skip
            old, old_socket, old_port = start_gateway(work / "before", old_codex, key, source)
            processes.append(old)
            paths += [
                (f"gateway before {args.before}, TCP",
                 {"url": f"http://127.0.0.1:{old_port}", "key": key}, "stub", old.pid),
                (f"gateway before {args.before}, UDS->UDS", {"socket": old_socket}, "stub-uds",
                 old.pid),
            ]  # fmt: skip
        results: list[dict[str, Any]] = []
        for repeat in range(args.repeat):
            for stream in (False, True):
                for concurrency in (1, 16, 64):
                    for name, target, model, pid in paths:
                        run = measure(bench, target, concurrency, stream, model, pid)
                        run |= {"path": name, "stream": stream, "concurrency": concurrency,
                                "repeat": repeat}  # fmt: skip
                        results.append(run)
                        print(f"{name:34} stream={stream!s:5} c={concurrency:<3} "
                              f"p50={run['latency_ms']['p50']:.3f}ms req/s={run['req_per_s']:.0f} "
                              f"cpu/req={run['proxy_cpu_us_per_req'] or 0:.0f}us "
                              f"errors={run['errors']}", flush=True)  # fmt: skip
    finally:
        stop_all(processes)
    args.out.mkdir(parents=True, exist_ok=True)
    document = {"machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                            "python": platform.python_version()},
                "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "before": args.before, "runs": results}  # fmt: skip
    (args.out / "gateway_overhead.json").write_text(json.dumps(document, indent=1))
    (args.out / "gateway_overhead.md").write_text(table(results))
    print(table(results))


def _median(rows: list[dict[str, Any]], pick: Any) -> float | None:
    values = [v for row in rows if (v := pick(row)) is not None]
    return statistics.median(values) if values else None


def table(results: list[dict[str, Any]]) -> str:
    """Markdown tables in PEERS.md's columns (medians over repeats)."""
    lines = []
    for stream in (False, True):
        lines += [
            f"## {'Streaming' if stream else 'Non-streaming'} chat completions", "",
            "| path | p50 c=1 ms | added p50 c=1 | proxy CPU µs/req c=16 | req/s c=1 | "
            "req/s c=64 | p99 c=64 ms | added p50 c=64 |",
            "|---|---|---|---|---|---|---|---|",
        ]  # fmt: skip
        names = list(dict.fromkeys(r["path"] for r in results))
        of_kind = [r for r in results if r["stream"] == stream]

        def cell(name: str, concurrency: int, pick: Any, rows: Any = of_kind) -> float | None:
            chosen = [r for r in rows if r["path"] == name and r["concurrency"] == concurrency]
            return _median(chosen, pick)

        def value(name: str, concurrency: int, pick: Any) -> float:
            found = cell(name, concurrency, pick)
            assert found is not None
            return found

        for name in names:
            direct = "direct UDS" if "UDS" in name else "direct TCP"  # before: its own stubs
            p50 = value(name, 1, lambda r: r["latency_ms"]["p50"])
            base = value(direct, 1, lambda r: r["latency_ms"]["p50"])
            p50_64 = value(name, 64, lambda r: r["latency_ms"]["p50"])
            base_64 = value(direct, 64, lambda r: r["latency_ms"]["p50"])
            cpu = cell(name, 16, lambda r: r["proxy_cpu_us_per_req"])
            lines.append(
                f"| {name} | {p50:.3f} | "
                + ("–" if name.startswith("direct") else f"{p50 - base:+.3f} ms") + " | "
                + ("–" if cpu is None else f"{cpu:.0f}") + " | "
                + f"{value(name, 1, lambda r: r['req_per_s']):,.0f} | "
                + f"{value(name, 64, lambda r: r['req_per_s']):,.0f} | "
                + f"{value(name, 64, lambda r: r['latency_ms']['p99']):.2f} | "
                + ("–" if name.startswith("direct") else f"{p50_64 - base_64:+.2f} ms") + " |"
            )  # fmt: skip
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
