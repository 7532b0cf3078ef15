"""Spans from a request's notes, their encoding, and an exporter that logs an outage once."""

from __future__ import annotations

import io
import json
import time
from collections.abc import Sequence
from typing import Any

from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from otlp_receiver import Receiver
from soulstone.observe.logging import make_logger
from soulstone.observe.otlp import LoggedExporter, OtlpTracer, expand, service_resource
from soulstone.observe.trace import Notes, parse_traceparent
from soulstone.observe.wire import SpanEncoder

CALLER = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def traced_request(tracer: OtlpTracer, status: int = 200) -> Notes:
    """A request with a caller, a queue wait, an engine call (streamed) and a council phase."""
    notes = Notes(parse_traceparent(CALLER))
    began = time.perf_counter()
    notes.add("soulstone.queue", began, wait="slot")
    notes.upstream_header("a", "/v1/chat/completions", True)
    notes.open("soulstone.council", council="pair")  # still open when settled: ends then
    notes.streamed(time.perf_counter(), 4, None, 1, None)
    tracer.finish(notes, {"request_id": "r-1", "status": status, "error_code": "X"}, status)
    return notes


def queued_of(status: int = 200) -> tuple[Notes, ReadableSpan]:
    """A traced request's notes, and what its tracer queued: one object, its span."""
    memory = InMemorySpanExporter()
    tracer = OtlpTracer(SimpleSpanProcessor(memory), memory, service_resource())
    notes = traced_request(tracer, status)
    [queued] = memory.get_finished_spans()
    return notes, queued


def spans_of(status: int = 200) -> tuple[Notes, dict[str, ReadableSpan]]:
    notes, queued = queued_of(status)
    return notes, {span.name: span for span in expand([queued])}


def test_a_request_span_and_its_phases_are_built_from_the_notes() -> None:
    notes, spans = spans_of()
    assert set(spans) == {"soulstone.request", "soulstone.queue", "soulstone.upstream",
                          "soulstone.council", "soulstone.tool_check"}  # fmt: skip
    request = spans["soulstone.request"]
    assert request.kind is SpanKind.SERVER and request.status.status_code is StatusCode.UNSET
    assert request.context is not None and request.parent is not None
    assert request.context.trace_id == 0x4BF92F3577B34DA6A3CE929D0E0E4736
    assert (request.parent.span_id, request.parent.is_remote) == (0x00F067AA0BA902B7, True)
    assert request.resource.attributes["service.name"] == "soulstone"
    assert request.start_time is not None and request.end_time is not None
    for name, span in spans.items():
        if name == "soulstone.request":
            continue
        assert span.parent is not None and span.parent.span_id == notes.span_id, name
        assert not span.parent.is_remote
        assert span.start_time is not None and span.end_time is not None
        assert request.start_time <= span.start_time <= span.end_time <= request.end_time, name
    upstream = spans["soulstone.upstream"]
    assert upstream.kind is SpanKind.CLIENT and upstream.context is not None
    assert notes.upstream is not None and upstream.context.span_id == notes.upstream.span_id
    assert [event.name for event in upstream.events] == ["first_token"]
    assert dict(upstream.attributes or {}) == {"soulstone": "a", "stream": True, "status": 200,
                                               "endpoint": "/v1/chat/completions",
                                               "chunks": 4}  # fmt: skip
    assert spans["soulstone.council"].end_time == request.end_time
    assert dict(spans["soulstone.tool_check"].attributes or {}) == {"tool_calls": 1}


def test_a_server_error_marks_the_request_span_an_error_with_its_code() -> None:
    _, spans = spans_of(502)
    status = spans["soulstone.request"].status
    assert (status.status_code, status.description) == (StatusCode.ERROR, "X")
    _, spans = spans_of(404)  # the caller's mistake: not the server's error
    assert spans["soulstone.request"].status.status_code is StatusCode.UNSET


def test_an_unsampled_callers_trace_exports_nothing() -> None:
    memory = InMemorySpanExporter()
    tracer = OtlpTracer(SimpleSpanProcessor(memory), memory, service_resource())
    tracer.finish(Notes(parse_traceparent(CALLER[:-2] + "00")), {"status": 200}, 200)
    assert memory.get_finished_spans() == ()


def test_batches_are_encoded_as_the_sdks_encoder_encodes_them() -> None:
    memory = InMemorySpanExporter()
    tracer = OtlpTracer(SimpleSpanProcessor(memory), memory, service_resource())
    traced_request(tracer, 502)
    notes = Notes(None)
    varied: dict[str, Any] = {"request_id": "r-2", "ratio": 0.5, "flag": False, "n": -3,
                              "zero": 0, "empty": "", "text": "ünï ✓", "big": 2**62,
                              "many": ["a", "b"], "on": True}  # fmt: skip
    tracer.finish(notes, varied, 200)
    queued = memory.get_finished_spans()
    spans = expand(queued)
    assert len(queued) == 2 and len(spans) == 6
    expected = encode_spans(spans)
    encoder = SpanEncoder()
    plain = [span for span in spans if not hasattr(span, "notes")]  # SDK spans, as they come
    for _ in range(2):  # the second time from remembered attributes
        assert ExportTraceServiceRequest.FromString(encoder.encode(queued)) == expected
        decoded = ExportTraceServiceRequest.FromString(encoder.encode(plain))
        assert decoded == encode_spans(plain)
    assert encoder.encode([]) == encode_spans([]).SerializeToString() == b""


def test_text_that_is_not_utf_8_is_replaced_not_a_lost_batch() -> None:
    memory = InMemorySpanExporter()
    tracer = OtlpTracer(SimpleSpanProcessor(memory), memory, service_resource())
    tracer.finish(Notes(None), {"request_id": "bad-\udcff-id", "status": 200}, 200)
    decoded = ExportTraceServiceRequest.FromString(SpanEncoder().encode(
        memory.get_finished_spans()))  # fmt: skip
    [span] = decoded.resource_spans[0].scope_spans[0].spans
    assert span.attributes[0].value.string_value == "bad-?-id"


def test_an_outage_is_logged_once_and_its_end_once(otlp_receiver: Receiver) -> None:
    log = io.StringIO()
    url = f"{otlp_receiver.url}/v1/traces"
    exporter = LoggedExporter(OTLPSpanExporter(endpoint=url),
                              url.replace("http://", "http://me:secret@"),
                              make_logger("test", log))  # fmt: skip
    batch = [queued_of()[1]]
    results = []
    for status in (200, 500, 500, 500, 200, 200, 500):  # 500: refused, and not retried
        otlp_receiver.status = status
        results.append(exporter.export(batch))
    ok, failed = SpanExportResult.SUCCESS, SpanExportResult.FAILURE
    assert results == [ok, failed, failed, failed, ok, ok, failed]
    assert otlp_receiver.posts == 7 and len(otlp_receiver.spans) == 3 * 5  # a request: 5 spans
    lines: list[dict[str, Any]] = [json.loads(line) for line in log.getvalue().splitlines()]
    assert [line["event"].split(";")[0] for line in lines] == [
        "traces cannot be exported",
        "traces are exported again",
        "traces cannot be exported",
    ]
    assert lines[1]["lost_requests"] == 3
    assert all(line["endpoint"] == url for line in lines)  # never the credentials
    exporter.shutdown()


class Broken:
    """An exporter that raises (it has no HTTP client of its own to use)."""

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        raise ConnectionError("refused")

    def shutdown(self) -> None:
        return


def test_an_exporter_that_raises_is_a_failed_batch_not_a_crash() -> None:
    log = io.StringIO()
    exporter = LoggedExporter(Broken(), "http://127.0.0.1:9/v1/traces",  # type: ignore[arg-type]
                              make_logger("test", log))  # fmt: skip
    assert exporter.export([queued_of()[1]]) is SpanExportResult.FAILURE
    assert json.loads(log.getvalue())["reason"] == "ConnectionError"


class Keeping:
    """An exporter without an HTTP client of its own: it gets every span as a ReadableSpan."""

    def __init__(self) -> None:
        self.spans: list[ReadableSpan] = []

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.spans += spans
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        return


def test_an_exporter_without_its_own_client_gets_every_span_itself() -> None:
    kept = Keeping()
    exporter = LoggedExporter(kept, "http://127.0.0.1:9/v1/traces",  # type: ignore[arg-type]
                              make_logger("test", io.StringIO()))  # fmt: skip
    assert exporter.export([queued_of()[1]]) is SpanExportResult.SUCCESS
    assert sorted(span.name for span in kept.spans) == [
        "soulstone.council", "soulstone.queue", "soulstone.request", "soulstone.tool_check",
        "soulstone.upstream"]  # fmt: skip
