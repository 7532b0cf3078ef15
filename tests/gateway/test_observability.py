"""One scrape target for the box: the gateway's figures and its engines', and the listener."""

from __future__ import annotations

import json
import re
import socket
import time
from pathlib import Path

import httpx2
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as parse_openmetrics,
)
from prometheus_client.parser import text_string_to_metric_families as parse_text

from gateway_harness import StartGateway, fake_codex, fake_table
from helpers import free_port


def sample(text: str, name: str, **labels: str) -> float | None:
    for family in parse_text(text):
        for found in family.samples:
            if found.name == name and all(found.labels.get(k) == v for k, v in labels.items()):
                return float(found.value)
    return None


def test_the_listener_serves_metrics_with_the_engines_and_nothing_else(
    tmp_path: Path,
    start_gateway: StartGateway,
) -> None:
    vllm = 'engine = "vllm"\nmodel_path = "/m"'  # vLLM-shaped fakes: their /metrics is scraped
    engines = [
        fake_table("vl", model="m-v", group="g", extra=vllm),
        fake_table("quiet", "--metrics-delay", "30", model="m-q", group="g", extra=vllm),
    ]
    port = free_port()
    gateway = start_gateway(fake_codex(tmp_path / "codex", *engines), "--metrics-tcp",
                            f"127.0.0.1:{port}", clients={"clients": {}})  # fmt: skip
    with gateway.http() as http:
        for model in ("m-v", "m-v", "m-q"):
            answer = http.post("/v1/chat/completions", json={"model": model, "messages": []})
            assert answer.status_code == 200, answer.text
    listener = f"http://127.0.0.1:{port}"
    began = time.monotonic()
    scraped = httpx2.get(f"{listener}/metrics")  # no identity asked
    took = time.monotonic() - began
    assert scraped.status_code == 200
    text = scraped.text
    assert sample(text, "soulstone_requests_total", model="m-v", status="200",
                  client="owner") == 2  # fmt: skip
    assert sample(text, "soulstone_completion_tokens_total", model="m-v", client="owner") == 16
    assert sample(text, "vllm:request_success_total", soulstone="vl", model_name="m-v") == 2
    assert sample(text, "vllm:num_requests_running", soulstone="vl") == 0
    assert sample(text, "soulstone_engine_up", soulstone="vl") == 1
    # The engine that answers /metrics slowly is left out, counted, and did not hold the answer.
    assert sample(text, "vllm:request_success_total", soulstone="quiet") is None
    assert sample(text, "soulstone_engine_scrape_failures_total", soulstone="quiet") == 1
    assert took < 10  # bounded by the scrape timeout (1 s), not the engine's 30 s
    assert sample(text, "soulstone_api_socket_up", path=str(gateway.socket)) == 1
    assert "soulstone_gpu_memory_used_bytes" not in text  # no GPU here: absent, not zero
    for path in ("/v1/models", "/v1/chat/completions", "/admin/status", "/admin/reload"):
        for method in ("GET", "POST"):
            refused = httpx2.request(method, f"{listener}{path}")
            assert refused.status_code == 404, (method, path)
    assert httpx2.get(f"{listener}/health").json() == {"status": "ok"}


def test_openmetrics_carries_the_request_id_as_exemplar(
    tmp_path: Path,
    start_gateway: StartGateway,
) -> None:
    port = free_port()
    gateway = start_gateway(fake_codex(tmp_path / "codex", fake_table("a", model="m-a")),
                            "--metrics-tcp", f"127.0.0.1:{port}")  # fmt: skip
    with gateway.http() as http:
        http.post("/v1/chat/completions", headers={"X-Request-ID": "trace-me-1"},
                  json={"model": "m-a", "messages": []})  # fmt: skip
    accept = {"Accept": "application/openmetrics-text; version=1.0.0"}
    answer = httpx2.get(f"http://127.0.0.1:{port}/metrics", headers=accept)
    assert answer.headers["content-type"].startswith("application/openmetrics-text")
    parsed = parse_openmetrics(answer.text)  # type: ignore[no-untyped-call]
    families = {f.name: f for f in parsed}  # the strict parser: it must parse
    exemplars = [s.exemplar for s in families["soulstone_request_seconds"].samples if s.exemplar]
    assert any(e.labels == {"request_id": "trace-me-1"} for e in exemplars)


def test_the_metrics_socket_is_group_readable_and_strict_refuses_tcp(
    tmp_path: Path,
    start_gateway: StartGateway,
) -> None:
    import grp
    import os

    where = tmp_path / "obs" / "metrics.sock"  # a folder the gateway makes: the group's too
    group = grp.getgrgid(os.getgid()).gr_name
    gateway = start_gateway(fake_codex(tmp_path / "codex", fake_table("a", model="m-a")),
                            "--metrics-socket", str(where), "--metrics-group", group)  # fmt: skip
    mode = where.stat()
    assert oct(mode.st_mode & 0o777) == "0o660" and mode.st_gid == os.getgid()
    folder = where.parent.stat()
    assert oct(folder.st_mode & 0o777) == "0o750" and folder.st_gid == os.getgid()
    with httpx2.Client(transport=httpx2.HTTPTransport(uds=str(where)),
                       base_url="http://localhost") as http:  # fmt: skip
        assert "soulstone_in_flight" in http.get("/metrics").text
        assert http.get("/v1/models").status_code == 404
    refused = gateway.cli("serve", "--strict", "--metrics-tcp", "127.0.0.1:9")
    assert refused.returncode != 0
    assert re.search(r"strict mode refuses TCP", refused.stderr + refused.stdout)
    with socket.socket() as taken:  # a port someone else holds: named, not a traceback
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        busy = gateway.cli("serve", "--socket", str(tmp_path / "other.sock"), "--metrics-tcp",
                           f"127.0.0.1:{port}")  # fmt: skip
    assert busy.returncode != 0
    assert f"cannot listen on --metrics-tcp 127.0.0.1:{port}" in busy.stderr + busy.stdout
    assert "Traceback" not in busy.stderr


def test_only_requests_to_engines_without_an_id_count_as_missing_ids(
    tmp_path: Path,
    start_gateway: StartGateway,
) -> None:
    port = free_port()
    gateway = start_gateway(fake_codex(tmp_path / "codex", fake_table("a", model="m-a")),
                            "--metrics-tcp", f"127.0.0.1:{port}")  # fmt: skip
    with gateway.http() as http:
        for _ in range(2):
            http.post("/v1/chat/completions", json={"model": "m-a", "messages": []})
        http.post("/v1/chat/completions", headers={"X-Request-ID": "given"},
                  json={"model": "m-a", "messages": []})  # fmt: skip
        for path in ("/health", "/v1/models", "/admin/status", "/metrics"):
            assert http.get(path).status_code == 200
    for _ in range(3):  # scrapes, as Prometheus makes them: no id
        text = httpx2.get(f"http://127.0.0.1:{port}/metrics").text
    assert sample(text, "soulstone_request_ids_generated_total") == 2


def test_the_gateway_log_is_kept_for_soulstone_logs_gateway(
    tmp_path: Path,
    start_gateway: StartGateway,
) -> None:
    gateway = start_gateway(fake_codex(tmp_path / "codex", fake_table("a", model="m-a")))
    with gateway.http() as http:
        for request_id, stream in (("logged-1", True), ("logged-2", False)):
            http.post("/v1/chat/completions", headers={"X-Request-ID": request_id},
                      json={"model": "m-a", "stream": stream,
                            "messages": [{"role": "user", "content": "MARKER-7731"}]})  # fmt: skip
    deadline = time.monotonic() + 15
    while True:
        shown = gateway.cli("logs", "--gateway", "-n", "50")
        lines = [json.loads(line) for line in shown.stdout.splitlines() if line.startswith("{")]
        found = {line["request_id"]: line for line in lines
                 if line.get("request_id") in ("logged-1", "logged-2")}  # fmt: skip
        if len(found) == 2 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert shown.returncode == 0, shown.stderr
    streamed, whole = found["logged-1"], found["logged-2"]
    assert streamed["client"] == "owner" and streamed["model"] == "m-a"
    assert streamed["status"] == 200 and 0 < streamed["ttft_ms"] <= streamed["ms"]
    assert whole["completion_tokens"] == 8 and whole["prompt_tokens"] > 0
    assert any(entry.get("event") == "listening" for entry in lines)
    with gateway.http() as http:
        assert "MARKER-7731" not in http.get("/metrics").text
    # ... and in no file the gateway wrote: state, logs, config, data, its stderr.
    written = [p for p in tmp_path.rglob("*") if p.is_file() and not p.is_symlink()]
    assert gateway.state.gateway_log in written and gateway.log in written
    assert [p for p in written if b"MARKER-7731" in p.read_bytes()] == []
    neither = gateway.cli("logs")
    assert neither.returncode != 0 and "--gateway" in neither.stderr
