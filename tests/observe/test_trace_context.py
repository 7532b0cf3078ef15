"""Where traces go, and W3C trace context in and out (no OpenTelemetry needed)."""

from __future__ import annotations

import pytest

from soulstone.errors import UsageError
from soulstone.observe.trace import (
    Notes,
    SpanRef,
    Target,
    parse_traceparent,
    shown_url,
    traceparent,
    traces_target,
)

VALID = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def test_a_valid_traceparent_names_the_callers_span() -> None:
    assert parse_traceparent(VALID) == SpanRef(0x4BF92F3577B34DA6A3CE929D0E0E4736,
                                               0x00F067AA0BA902B7, True, True)  # fmt: skip
    unsampled = parse_traceparent(VALID[:-2] + "00")
    assert unsampled is not None and not unsampled.sampled
    # A later version may add fields after the flags; version 00 may not.
    assert parse_traceparent("01" + VALID[2:] + "-more") is not None


@pytest.mark.parametrize("value", [
    None, "", "garbage", VALID + "-extra", "ff" + VALID[2:], VALID.upper(),
    "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
    "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
    "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
    "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902bz-01",
])  # fmt: skip
def test_a_malformed_traceparent_starts_a_new_trace(value: str | None) -> None:
    assert parse_traceparent(value) is None
    notes = Notes(parse_traceparent(value))
    assert notes.parent is None and notes.sampled and notes.trace_id and notes.span_id


def test_the_engine_is_told_the_upstream_span() -> None:
    parent = parse_traceparent(VALID)
    notes = Notes(parent)
    header = notes.upstream_header("a", "/v1/chat/completions", False)
    assert notes.upstream is not None
    expected = traceparent(notes.trace_id, notes.upstream.span_id)
    assert header == f"traceparent: {expected}\r\n".encode()
    assert expected.startswith("00-4bf92f3577b34da6a3ce929d0e0e4736-") and expected.endswith("-01")
    assert parse_traceparent(expected) == SpanRef(notes.trace_id, notes.upstream.span_id,
                                                  True, True)  # fmt: skip


def test_tracing_is_off_unless_asked_for() -> None:
    assert traces_target(None, {}) is None
    assert traces_target(None, {"OTEL_SERVICE_NAME": "x"}) is None


def test_the_flag_wins_then_the_traces_url_then_the_base_url() -> None:
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://base:4318/",
           "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://whole:4318/custom"}  # fmt: skip
    assert traces_target("http://flag:4318", env) == Target("http://flag:4318/v1/traces",
                                                            "--otlp-endpoint")  # fmt: skip
    assert traces_target(None, env) == Target("http://whole:4318/custom",
                                              "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")  # fmt: skip
    del env["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"]
    assert traces_target(None, env) == Target("http://base:4318/v1/traces",
                                              "OTEL_EXPORTER_OTLP_ENDPOINT")  # fmt: skip
    assert traces_target("http://c:4318/v1/traces", {}) == Target("http://c:4318/v1/traces",
                                                                  "--otlp-endpoint")  # fmt: skip


def test_the_standard_switches_turn_the_variables_off_but_not_the_flag() -> None:
    for off in ({"OTEL_SDK_DISABLED": "true"}, {"OTEL_TRACES_EXPORTER": "none"}):
        env = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://base:4318", **off}
        assert traces_target(None, env) is None
        assert traces_target("http://flag:4318", env) is not None


@pytest.mark.parametrize(("flag", "env", "named"), [
    ("127.0.0.1:4318", {}, "--otlp-endpoint"),
    (None, {"OTEL_EXPORTER_OTLP_ENDPOINT": "ftp://x"}, "OTEL_EXPORTER_OTLP_ENDPOINT"),
    (None, {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://"},
     "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"),
])  # fmt: skip
def test_a_url_that_is_not_one_is_refused_naming_its_setting(
    flag: str | None, env: dict[str, str], named: str
) -> None:
    with pytest.raises(UsageError, match=named):
        traces_target(flag, env)


def test_a_logged_url_carries_no_credentials() -> None:
    assert shown_url("https://user:secret@collector:4318/v1/traces?token=t") == (
        "https://collector:4318/v1/traces"
    )
