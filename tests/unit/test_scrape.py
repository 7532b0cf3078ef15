"""Engines' metrics relabelled and merged into one exposition that parsers accept (pure)."""

from __future__ import annotations

from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as parse_openmetrics,
)
from prometheus_client.parser import text_string_to_metric_families as parse_text

from soulstone.observe.scrape import merge, parse_families, render_openmetrics, render_text

VLLM = """# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{model_name="qwen"} 3.0
# HELP vllm:prompt_tokens_total Number of prefill tokens processed.
# TYPE vllm:prompt_tokens_total counter
vllm:prompt_tokens_total{model_name="qwen"} 120.0
vllm:prompt_tokens_created{model_name="qwen"} 1.7e9
# HELP vllm:e2e_request_latency_seconds Histogram of end to end request latency.
# TYPE vllm:e2e_request_latency_seconds histogram
vllm:e2e_request_latency_seconds_bucket{le="0.5",model_name="qwen"} 1.0
vllm:e2e_request_latency_seconds_bucket{le="+Inf",model_name="qwen"} 2.0
vllm:e2e_request_latency_seconds_count{model_name="qwen"} 2.0
vllm:e2e_request_latency_seconds_sum{model_name="qwen"} 1.25
"""
LLAMA = """# HELP llamacpp:prompt_tokens_total Number of prompt tokens processed.
# TYPE llamacpp:prompt_tokens_total counter
llamacpp:prompt_tokens_total 44
# HELP llamacpp:kv_cache_usage_ratio KV-cache usage. 1 means 100 percent usage.
# TYPE llamacpp:kv_cache_usage_ratio gauge
llamacpp:kv_cache_usage_ratio 0.25
"""


def _samples(families: list[object]) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found = {}
    for family in families:
        for sample in family.samples:  # type: ignore[attr-defined]
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def test_every_sample_gets_its_soulstone_label_and_creation_times_are_dropped() -> None:
    families = parse_families(VLLM, "team.qwen")
    assert [f.name for f in families] == ["vllm:num_requests_running",
                                          "vllm:prompt_tokens_total",
                                          "vllm:e2e_request_latency_seconds"]  # fmt: skip
    assert families[0].samples == [
        'vllm:num_requests_running{soulstone="team.qwen",model_name="qwen"} 3.0'
    ]
    unlabelled = parse_families(LLAMA, "llama")[1].samples
    assert unlabelled == ['llamacpp:kv_cache_usage_ratio{soulstone="llama"} 0.25']


def test_two_engines_merge_into_one_text_exposition_that_prometheus_parses() -> None:
    merged = merge([parse_families(VLLM, "a"), parse_families(VLLM, "b"),
                    parse_families(LLAMA, "c")])  # fmt: skip
    text = render_text(merged)
    assert text.count("# TYPE vllm:num_requests_running gauge") == 1
    samples = _samples(list(parse_text(text)))
    assert samples[("vllm:num_requests_running",
                    (("model_name", "qwen"), ("soulstone", "b")))] == 3.0  # fmt: skip
    assert samples[("llamacpp:prompt_tokens_total", (("soulstone", "c"),))] == 44
    assert samples[("vllm:e2e_request_latency_seconds_count",
                    (("model_name", "qwen"), ("soulstone", "a")))] == 2.0  # fmt: skip


def test_the_openmetrics_form_parses_strictly() -> None:
    merged = merge([parse_families(VLLM, "a"), parse_families(LLAMA, "c")])
    text = render_openmetrics(merged) + "# EOF\n"
    families = {f.name: f for f in parse_openmetrics(text)}  # type: ignore[no-untyped-call]
    assert families["vllm:prompt_tokens"].type == "counter"
    assert families["llamacpp:kv_cache_usage_ratio"].type == "gauge"
    assert families["vllm:e2e_request_latency_seconds"].type == "histogram"


def test_garbage_is_left_out_not_passed_on() -> None:
    page = "<html>\n<body>not found</body>\n</html>\nfoo bar baz\n"
    assert parse_families(page, "x") == []
    assert parse_families("", "x") == []
    kept = parse_families('ok{a="} b"} 1\nbad{ 2\nok 2 1700000000000\n', "x")
    assert [s for f in kept for s in f.samples] == [
        'ok{soulstone="x",a="} b"} 1',
        'ok{soulstone="x"} 2 1700000000000',
    ]
