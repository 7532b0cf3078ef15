"""A real Prometheus server (tests/prometheus_harness.py) scraping targets the tests start.

Needs Debian's `prometheus` (scripts/get-prometheus): skipped where it is
absent, failing instead when `CI` is set.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from gateway_harness import StartGateway, fake_codex, fake_table
from helpers import free_port
from observe_files import expressions
from prometheus_harness import StartPrometheus, Target


class Counting(ThreadingHTTPServer):
    """A metrics target on loopback exposing one counter that the test raises."""

    hits = 0


class _Handler(BaseHTTPRequestHandler):
    server: Counting

    def do_GET(self) -> None:
        if self.path != "/metrics":
            self.send_error(404)
            return
        body = f"# TYPE demo_hits_total counter\ndemo_hits_total {self.server.hits}\n".encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        return


@pytest.fixture
def counting() -> Iterator[Counting]:
    server = Counting(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_query_waits_for_what_the_target_counted(
    counting: Counting, start_prometheus: StartPrometheus
) -> None:
    prometheus = start_prometheus([Target(f"127.0.0.1:{counting.server_address[1]}", job="demo")])
    counting.hits = 3
    assert prometheus.value("demo_hits_total", until=lambda v: v == 3) == 3
    assert prometheus.value('up{job="demo"}') == 1
    counting.hits = 5
    assert prometheus.value("demo_hits_total", until=lambda v: v == 5) == 5
    with pytest.raises(AssertionError, match="gave"):
        prometheus.value("demo_hits_total", until=lambda v: v == 6, timeout=1)


def test_every_shipped_expression_is_promql_prometheus_accepts(
    start_prometheus: StartPrometheus,
) -> None:
    """Dashboard queries (Grafana's variables filled in) and rules, asked of a real server."""
    prometheus = start_prometheus([])
    refused = {}
    for where, expr in expressions():
        body = prometheus.api("query", query=expr)
        if body.get("status") != "success":
            refused[where] = body.get("error")
    assert not refused, refused
    assert prometheus.api("query", query="sum(rate(x[5m]) by")["status"] == "error"


def test_prometheus_scrapes_the_gateway_over_its_api_with_a_key(
    tmp_path: Path, start_gateway: StartGateway, start_prometheus: StartPrometheus
) -> None:
    """Until the observability listener: /metrics on the API's TCP listener, admin key."""
    gateway = start_gateway(fake_codex(tmp_path / "codex", fake_table("alpha", model="alpha")))
    client = gateway.uds_client()
    for _ in range(4):
        client.chat.completions.create(model="alpha", messages=[{"role": "user", "content": "hi"}])
    prometheus = start_prometheus([Target(f"127.0.0.1:{gateway.tcp_port}", bearer=gateway.key)])
    expr = 'sum(soulstone_requests_total{model="alpha", status="200"})'
    assert prometheus.value(expr, until=lambda v: v == 4) == 4


def test_prometheus_scrapes_the_observability_listener(
    tmp_path: Path, start_gateway: StartGateway, start_prometheus: StartPrometheus
) -> None:
    """`serve --metrics-tcp`: Prometheus needs no key and counts what the test asked."""
    port = free_port()
    codex = fake_codex(tmp_path / "codex", fake_table("alpha", model="alpha"))
    gateway = start_gateway(codex, "--metrics-tcp", f"127.0.0.1:{port}")
    client = gateway.uds_client()
    for _ in range(5):
        client.chat.completions.create(model="alpha", messages=[{"role": "user", "content": "hi"}])
    prometheus = start_prometheus([Target(f"127.0.0.1:{port}")])
    expr = 'sum(soulstone_requests_total{model="alpha", status="200"})'
    assert prometheus.value(expr, until=lambda v: v == 5) == 5
    assert prometheus.value('up{job="soulstone"}') == 1
