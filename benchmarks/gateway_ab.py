"""Gateway CPU per request, two versions side by side, interleaved: a fair A/B on a noisy box.

    .venv/bin/python benchmarks/gateway_ab.py --before GIT_REF [--rounds 4] [--requests 4000]
        [--traced]

Both gateways (this checkout's and the one of GIT_REF, each with its own stub
engines), the minimal aiohttp pass-through and nginx (the lower bound: a
reverse proxy with a keep-alive upstream pool, proxy buffering off, one
process; left out with a note when `nginx` is not installed) run at once; each round asks
every one of them in a new random order, on the Unix socket and over TCP,
streamed and not, at c=16 (CPU per request, read from /proc) and at c=1
(p50 latency). Medians over rounds go to benchmarks/results/gateway_ab.json
and a table to stdout. Shorter than gateway_overhead.py, and less exposed to
the machine drifting during the run, since every version sees every drift.
With `--traced`, a third gateway of this checkout runs with traces on
(`--otlp-endpoint` to `otlp_sink.py`, a local collector pinned with the
client), so tracing's cost is read beside the untraced gateway: its CPU per
request includes the exporter's thread (encoding and sending batches).
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import signal
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from gateway_overhead import (
    PYTHON,
    REQUESTS,
    ROOT,
    export_source,
    free_port,
    measure,
    pinned,
    start_gateway,
    stop_all,
    wait_listening,
    write_codex,
)

from soulstone.guard.keys import new_key


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--bench-dir", type=Path, default=ROOT.parent / "shared" / "bench")
    parser.add_argument("--before", required=True, metavar="GIT_REF")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--requests", type=int, default=4000)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument(
        "--traced",
        action="store_true",
        help="also this checkout's gateway with traces on (to a local sink)",
    )
    args = parser.parse_args()
    bench = args.bench_dir
    REQUESTS[16] = args.requests
    REQUESTS[1] = max(500, args.requests // 4)
    work = Path(tempfile.mkdtemp(prefix="ss-ab-", dir="/tmp"))
    key, _ = new_key()
    processes: list[subprocess.Popen[bytes]] = []
    targets: list[tuple[str, dict[str, str], str, int]] = []
    sink: subprocess.Popen[bytes] | None = None
    exported: dict[str, int] = {}
    versions: list[tuple[str, str | None]] = [("now", None), (f"before {args.before}", "before")]
    extra: dict[str, list[str]] = {}
    if args.traced:
        sink_port = free_port()
        sink = pinned(1, [PYTHON, str(ROOT / "benchmarks" / "otlp_sink.py"), "--port",
                          str(sink_port)], stdout=subprocess.PIPE)  # fmt: skip
        wait_listening(f"127.0.0.1:{sink_port}")
        versions.append(("now, traced", "traced"))
        extra["traced"] = ["--otlp-endpoint", f"http://127.0.0.1:{sink_port}"]
    try:
        for name, source in versions:
            src = export_source(args.before, work / "before-src") if source == "before" else None
            codex = write_codex(work / f"codex-{source or 'now'}", bench, free_port(),
                                str(work / f"stub-{source or 'now'}.sock"))  # fmt: skip
            gateway, sock, port = start_gateway(work / (source or "now"), codex, key, src,
                                                extra.get(source or "", ()))  # fmt: skip
            processes.append(gateway)
            targets += [(f"{name}, UDS", {"socket": sock}, "stub-uds", gateway.pid),
                        (f"{name}, TCP", {"url": f"http://127.0.0.1:{port}", "key": key}, "stub",
                         gateway.pid)]  # fmt: skip
        stub_port, proxy_port = free_port(), free_port()
        stub_socket, proxy_socket = str(work / "stub-proxy.sock"), str(work / "proxy.sock")
        stub = [PYTHON, str(bench / "upstream_stub.py"), "--tokens", "16"]
        processes.append(pinned(0, [*stub, "--port", str(stub_port), "--model", "stub"],
                                stdout=subprocess.DEVNULL))  # fmt: skip
        processes.append(pinned(0, [*stub, "--socket", stub_socket, "--model", "stub-uds"],
                                stdout=subprocess.DEVNULL))  # fmt: skip
        wait_listening(stub_socket)
        wait_listening(f"127.0.0.1:{stub_port}")
        proxy = [PYTHON, str(ROOT / "benchmarks" / "minimal_proxy.py")]
        uds_proxy = pinned(0, [*proxy, "--socket", proxy_socket, "--upstream-socket", stub_socket],
                           stdout=subprocess.DEVNULL)  # fmt: skip
        upstream_url = f"http://127.0.0.1:{stub_port}"
        tcp_proxy = pinned(0, [*proxy, "--port", str(proxy_port), "--upstream-url", upstream_url],
                           stdout=subprocess.DEVNULL)  # fmt: skip
        processes += [uds_proxy, tcp_proxy]
        wait_listening(proxy_socket)
        wait_listening(f"127.0.0.1:{proxy_port}")
        targets += [("minimal proxy, UDS", {"socket": proxy_socket}, "stub-uds", uds_proxy.pid),
                    ("minimal proxy, TCP", {"url": f"http://127.0.0.1:{proxy_port}"}, "stub",
                     tcp_proxy.pid)]  # fmt: skip
        nginx = start_nginx(work / "nginx", stub_port, stub_socket)
        if nginx is None:
            print("nginx is not installed: no lower bound in this run", flush=True)
        else:
            processes.append(nginx[0])
            targets += [("nginx, UDS", {"socket": nginx[1]}, "stub-uds", nginx[0].pid),
                        ("nginx, TCP", {"url": f"http://127.0.0.1:{nginx[2]}"}, "stub",
                         nginx[0].pid)]  # fmt: skip
        runs: list[dict[str, Any]] = []
        for round_ in range(args.rounds):
            for stream in (False, True):
                for concurrency in (16, 1):
                    order = targets[:]
                    random.shuffle(order)
                    for name, target, model, pid in order:
                        run = measure(bench, target, concurrency, stream, model, pid)
                        run |= {"path": name, "stream": stream, "concurrency": concurrency,
                                "round": round_}  # fmt: skip
                        runs.append(run)
                        print(f"{round_} {name:28} stream={stream!s:5} c={concurrency:<2} "
                              f"cpu/req={run['proxy_cpu_us_per_req']:.0f}us "
                              f"p50={run['latency_ms']['p50']:.3f}ms errors={run['errors']}",
                              flush=True)  # fmt: skip
    finally:
        stop_all(processes)
        if sink is not None:
            sink.send_signal(signal.SIGTERM)
            out, _ = sink.communicate(timeout=60)
            exported = json.loads(out or b"{}")
            print(f"the sink took {exported}")
    args.out.mkdir(parents=True, exist_ok=True)
    document = {"when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "before": args.before, "runs": runs, "exported": exported}  # fmt: skip
    (args.out / "gateway_ab.json").write_text(json.dumps(document, indent=1))
    print(summary(runs))


NGINX_CONF = """master_process off;
daemon off;
worker_processes 1;
error_log {work}/error.log warn;
pid {work}/nginx.pid;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {work}/body;
    proxy_temp_path {work}/proxy;
    fastcgi_temp_path {work}/fastcgi;
    uwsgi_temp_path {work}/uwsgi;
    scgi_temp_path {work}/scgi;
    client_max_body_size 8m;
    keepalive_requests 1000000;
    upstream stub_tcp {{ server 127.0.0.1:{stub_port}; keepalive 256; }}
    upstream stub_uds {{ server unix:{stub_socket}; keepalive 256; }}
    server {{
        listen 127.0.0.1:{port};
        location / {{ proxy_pass http://stub_tcp; {common} }}
    }}
    server {{
        listen unix:{socket};
        location / {{ proxy_pass http://stub_uds; {common} }}
    }}
}}
"""
NGINX_COMMON = ('proxy_http_version 1.1; proxy_set_header Connection ""; '
                "proxy_buffering off; proxy_request_buffering off;")  # fmt: skip


def start_nginx(work: Path, stub_port: int, stub_socket: str,
                ) -> tuple[subprocess.Popen[bytes], str, int] | None:  # fmt: skip
    """nginx as a reverse proxy to the stubs (one process, pinned with the servers), or None.

    Its config goes to a temporary folder: a keep-alive upstream pool, HTTP/1.1
    to the upstream, buffering off (streams pass chunk by chunk).
    """
    binary = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists()
                                       else None)  # fmt: skip
    if binary is None:
        return None
    work.mkdir(parents=True)
    port, socket_path = free_port(), str(work / "nginx.sock")
    conf = work / "nginx.conf"
    text = NGINX_CONF.format(work=work, stub_port=stub_port, stub_socket=stub_socket, port=port,
                             socket=socket_path, common=NGINX_COMMON)  # fmt: skip
    conf.write_text(text)
    process = pinned(0, [binary, "-p", str(work), "-c", str(conf)], stdout=subprocess.DEVNULL)
    wait_listening(socket_path)
    wait_listening(f"127.0.0.1:{port}")
    return process, socket_path, port


def _ratio(value: float, base: float | None) -> str:
    return "–" if base is None else f"{value / base:.2f}×"


def summary(runs: list[dict[str, Any]]) -> str:
    """Median CPU µs/request at c=16 and p50 ms at c=1, per path and stream, with ratios.

    Ratios are against the minimal proxy and nginx on the same transport and
    stream kind (medians against medians).
    """
    lines = ["| path | stream | CPU µs/req c=16 | vs minimal proxy | vs nginx | p50 ms c=1 | "
             "p50 vs minimal proxy |", "|---|---|---|---|---|---|---|"]  # fmt: skip
    names = list(dict.fromkeys(run["path"] for run in runs))

    def medians(name: str, stream: bool) -> tuple[float, float] | None:
        mine = [r for r in runs if r["path"] == name and r["stream"] == stream]
        if not mine:
            return None
        cpu = statistics.median(r["proxy_cpu_us_per_req"] for r in mine
                                if r["concurrency"] == 16)  # fmt: skip
        p50 = statistics.median(r["latency_ms"]["p50"] for r in mine if r["concurrency"] == 1)
        return cpu, p50

    for stream in (False, True):
        for name in names:
            found = medians(name, stream)
            if found is None:
                continue
            cpu, p50 = found
            transport = name.rsplit(", ", 1)[-1]
            minimal = medians(f"minimal proxy, {transport}", stream)
            nginx = medians(f"nginx, {transport}", stream)
            lines.append(
                f"| {name} | {stream} | {cpu:.0f} | {_ratio(cpu, minimal and minimal[0])} | "
                f"{_ratio(cpu, nginx and nginx[0])} | {p50:.3f} | "
                f"{_ratio(p50, minimal and minimal[1])} |"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
