"""The shipped Grafana dashboard imports; it and the rules query what the gateway exposes."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from gateway_harness import SCRIPT, StartGateway, fake_codex, fake_table
from observe_files import (
    PROMETHEUS_SERIES,
    exposed_names,
    expressions,
    is_engine_series,
    metric_names,
    panels,
)

DATASOURCE = {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}


@pytest.fixture(scope="module")
def printed() -> dict[str, object]:
    """`soulstone observe dashboard`, parsed."""
    done = subprocess.run([str(SCRIPT), "observe", "dashboard"], capture_output=True, text=True,
                          timeout=60, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
    parsed: dict[str, object] = json.loads(done.stdout)
    return parsed


def test_the_dashboard_imports_with_a_prometheus_input(printed: dict[str, object]) -> None:
    assert isinstance(printed["schemaVersion"], int) and printed["schemaVersion"] >= 39
    assert printed["id"] is None and printed["uid"] == "soulstone"
    inputs = printed["__inputs"]
    assert isinstance(inputs, list)
    assert [(i["name"], i["type"], i["pluginId"]) for i in inputs] == [
        ("DS_PROMETHEUS", "datasource", "prometheus")
    ]


def test_every_panel_queries_the_input_datasource_on_the_grid() -> None:
    ids = [panel["id"] for panel in panels()]
    assert len(ids) == len(set(ids)), "panel ids repeat"
    for panel in panels():
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == DATASOURCE, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == DATASOURCE, panel["title"]
            assert target["expr"].strip(), panel["title"]


def test_the_dashboard_shows_the_engines_and_the_councils() -> None:
    queried = set().union(*(metric_names(expr) for _where, expr in expressions()))
    wanted = {
        "vllm:iteration_tokens_total_bucket",  # batch size quantiles
        "vllm:prompt_tokens_total", "llamacpp:prompt_tokens_total",  # prefill
        "vllm:generation_tokens_total", "llamacpp:tokens_predicted_total",  # decode
        "vllm:kv_cache_usage_perc",
        "soulstone_council_runs_total", "soulstone_council_persona_seconds_bucket",
        "soulstone_queue_depth", "soulstone_in_flight", "soulstone_swaps_total",
        "soulstone_ttft_seconds_bucket", "soulstone_engine_up",
    }  # fmt: skip
    assert wanted <= queried, wanted - queried


def test_every_gateway_metric_queried_is_one_the_gateway_exposes(
    tmp_path: Path, start_gateway: StartGateway
) -> None:
    """Rules and dashboard alike; engine series and Prometheus's own `up` aside."""
    codex = fake_codex(tmp_path / "codex", fake_table("alpha", model="alpha"))
    gateway = start_gateway(codex)
    gateway.uds_client().chat.completions.create(
        model="alpha", messages=[{"role": "user", "content": "hello"}]
    )
    with gateway.tcp() as admin:
        answer = admin.get("/metrics")
    assert answer.status_code == 200, answer.text
    exposed = exposed_names(answer.text)
    assert "soulstone_requests_total" in exposed and "soulstone_swap_seconds_bucket" in exposed
    unknown: dict[str, list[str]] = {}
    for where, expr in expressions():
        for name in metric_names(expr):
            if name not in exposed and name not in PROMETHEUS_SERIES and not is_engine_series(name):
                unknown.setdefault(name, []).append(where)
    assert not unknown, f"not exposed by the gateway: {unknown}"
