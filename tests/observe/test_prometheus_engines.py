"""A real Prometheus scraping a gateway in front of a real vLLM CPU engine and a llama-server.

One scrape target for the box: the gateway's own series and both engines'
(relabelled `soulstone="<id>"`), with the values the test's requests imply.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway_harness import StartGateway
from helpers import free_port, write
from prometheus_harness import StartPrometheus, Target
from real_engines import llama_table, vllm_table

pytestmark = pytest.mark.engine


def test_prometheus_finds_the_gateway_and_both_engines_in_one_scrape(
    tmp_path: Path, short_tmp: Path, start_gateway: StartGateway,
    start_prometheus: StartPrometheus,
) -> None:  # fmt: skip
    codex = write(tmp_path / "codex", {"box.toml": "\n".join([
        vllm_table("tv", "tiny-vllm", short_tmp / "v.sock", short_tmp,
                   extra_lines='models = ["tiny-vllm"]\ngroups = ["box"]\n'),
        llama_table("tl", "tiny-llama", "box", f"port = {free_port()}"),
    ])})  # fmt: skip
    port = free_port()
    gateway = start_gateway(codex, "--metrics-tcp", f"127.0.0.1:{port}")
    client = gateway.uds_client()
    for model, times in (("tiny-vllm", 3), ("tiny-llama", 2)):
        for _ in range(times):
            answer = client.chat.completions.create(
                model=model, messages=[{"role": "user", "content": "hello"}], max_tokens=4
            )
            assert answer.usage is not None
    prometheus = start_prometheus([Target(f"127.0.0.1:{port}")])
    ours = 'sum(soulstone_requests_total{model="%s", status="200"})'
    assert prometheus.value(ours % "tiny-vllm", until=lambda v: v == 3) == 3
    assert prometheus.value(ours % "tiny-llama", until=lambda v: v == 2) == 2
    # vLLM's own count of finished requests, under its soulstone's label.
    assert prometheus.value('sum(vllm:request_success_total{soulstone="tv"})',
                            until=lambda v: v == 3) == 3  # fmt: skip
    # llama-server's tokens predicted equal the completion tokens the gateway counted for it.
    predicted = prometheus.value('sum(llamacpp:tokens_predicted_total{soulstone="tl"})',
                                 until=lambda v: v > 0)  # fmt: skip
    counted = prometheus.value('sum(soulstone_completion_tokens_total{model="tiny-llama"})')
    assert predicted == counted == 8
    assert prometheus.value('soulstone_engine_up{soulstone="tv"}') == 1
    assert prometheus.value('soulstone_engine_up{soulstone="tl"}') == 1
