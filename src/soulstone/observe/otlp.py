"""Export request traces over OTLP/HTTP with the OpenTelemetry SDK (the `otel` extra).

Imported only when tracing is on. Spans are built when a request is settled,
from the notes its path wrote (`observe.trace.Notes`), with the times they
recorded: no live span objects, no context switching on the hot path. One
object per request (its span, carrying its phases) goes to the SDK's
BatchSpanProcessor (a bounded queue and a thread of its own:
a request never waits for, or fails because of, the collector) and from
there to the OTLP/HTTP exporter. Batches are encoded by `observe.wire`
(the message the SDK's encoder builds, at a fraction of its cost: see
benchmarks/gateway_overhead.md) and sent by the exporter's HTTP client (its
retries, headers, TLS and compression settings from the standard OTEL_*
variables). A collector that cannot be reached is logged once per outage,
not per request or batch; the SDK's own log lines are silenced.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Sequence
from typing import Any

from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan, SpanProcessor
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags

from soulstone.observe.trace import Attribute, Notes, Target, shown_url
from soulstone.observe.wire import SpanEncoder

SCOPE = "soulstone"
SERVICE = "soulstone"
_SAMPLED = TraceFlags(TraceFlags.SAMPLED)
_OK = Status(StatusCode.UNSET)


# -- exporting --------------------------------------------------------------------------------


class LoggedExporter(SpanExporter):
    """The OTLP/HTTP exporter, logging a collector it cannot reach once per outage.

    Encodes batches itself and sends them with the exporter's HTTP client;
    an exporter without that client (another SDK version) exports as it
    does itself.
    """

    def __init__(self, exporter: OTLPSpanExporter, url: str, log: Any) -> None:
        self.exporter = exporter
        self.url = shown_url(url)
        self.log = log
        self.encoder = SpanEncoder()
        self.failing = False
        self.lost = 0  # requests whose spans could not be exported during this outage

    def _send(self, spans: Sequence[ReadableSpan]) -> bool:
        client = getattr(self.exporter, "_client", None)
        if client is None or not callable(getattr(client, "export", None)):
            return self.exporter.export(expand(spans)) is SpanExportResult.SUCCESS
        return bool(getattr(client.export(self.encoder.encode(spans)), "success", False))

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        """Send one batch; note (once) that the collector cannot be reached, or is back."""
        try:
            sent = self._send(spans)
        except Exception as error:  # never let the processor's thread see it
            sent, why = False, type(error).__name__
        else:
            why = "the collector did not take the batch"
        if sent:
            if self.failing:
                self.failing = False
                self.log.info("traces are exported again", endpoint=self.url,
                              lost_requests=self.lost)  # fmt: skip
            return SpanExportResult.SUCCESS
        self.lost += len(spans)
        if not self.failing:
            self.failing, self.lost = True, len(spans)
            self.log.warning("traces cannot be exported; requests go on, spans are dropped "
                             "until the collector answers (logged once)", endpoint=self.url,
                             reason=why)  # fmt: skip
        return SpanExportResult.FAILURE

    def shutdown(self) -> None:
        """Stop the exporter (its retries end at once)."""
        self.exporter.shutdown()  # type: ignore[no-untyped-call]

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        """Nothing is held here."""
        return True


class RequestSpan(ReadableSpan):
    """A request's span, carrying the notes of its phases: one object per request queued.

    The exporter writes the phases as the span's children (`expand` makes
    them ReadableSpans for an exporter that needs those).
    """

    def __init__(self, notes: Notes, context: SpanContext, parent: SpanContext | None,
                 resource: Resource, attributes: dict[str, Attribute], status: Status, end: int,
                 scope: InstrumentationScope) -> None:  # fmt: skip
        super().__init__("soulstone.request", context, parent, resource, attributes, (), (),
                         SpanKind.SERVER, None, status, notes.wall, end, scope)  # fmt: skip
        self.notes = notes


def expand(spans: Sequence[ReadableSpan]) -> list[ReadableSpan]:
    """Every span, each request's span preceded by its phases' spans (as the encoder writes)."""
    out: list[ReadableSpan] = []
    for span in spans:
        notes = getattr(span, "notes", None)
        if isinstance(notes, Notes) and span.context is not None and span.end_time is not None:
            out += _phase_spans(notes, span.context, span.end_time, span.resource,
                                span.instrumentation_scope)  # fmt: skip
        out.append(span)
    return out


def _phase_spans(notes: Notes, own: SpanContext, end: int, resource: Resource,
                 scope: InstrumentationScope | None) -> list[ReadableSpan]:  # fmt: skip
    spans: list[ReadableSpan] = []
    for phase in notes.phases:
        events = [Event(name, None, notes.ns(moment)) for name, moment in phase.events]
        kind = SpanKind.CLIENT if phase.client else SpanKind.INTERNAL
        spans.append(ReadableSpan(
            phase.name, SpanContext(own.trace_id, phase.span_id, False, _SAMPLED), own, resource,
            phase.attributes, events, (), kind, None, _OK, notes.ns(phase.start),
            notes.ns(phase.end) if phase.end is not None else end, scope,
        ))  # fmt: skip
    return spans


class OtlpTracer:
    """Builds each settled request's span from its notes and queues it for export."""

    def __init__(self, processor: SpanProcessor, exporter: SpanExporter,
                 resource: Resource) -> None:  # fmt: skip
        self.processor = processor
        self.exporter = exporter
        self.resource = resource
        self.scope = InstrumentationScope(SCOPE)

    def finish(self, notes: Notes, attributes: dict[str, Attribute], status: int) -> None:
        """Queue the request's span, with its phases (none for a caller's unsampled trace)."""
        if not notes.sampled:
            return
        end = notes.ns(time.perf_counter())
        parent = notes.parent
        caller = (SpanContext(parent.trace_id, parent.span_id, parent.remote, _SAMPLED)
                  if parent is not None else None)  # fmt: skip
        outcome = (
            Status(StatusCode.ERROR, str(attributes.get("error_code"))) if status >= 500 else _OK
        )
        own = SpanContext(notes.trace_id, notes.span_id, False, _SAMPLED)
        self.processor.on_end(RequestSpan(notes, own, caller, self.resource, attributes, outcome,
                                          end, self.scope))  # fmt: skip

    async def aclose(self, timeout_s: float) -> None:
        """Export what is queued (at most `timeout_s`), then stop the exporter and its thread."""
        done = threading.Event()

        def close() -> None:
            try:
                self.processor.force_flush()
            finally:
                self.exporter.shutdown()
                self.processor.shutdown()
                done.set()

        # A daemon thread: a collector that hangs cannot hold the gateway's exit.
        threading.Thread(target=close, name="soulstone-traces-close", daemon=True).start()
        await asyncio.to_thread(done.wait, timeout_s)


def service_resource() -> Resource:
    """The SDK's resource (OTEL_RESOURCE_ATTRIBUTES, OTEL_SERVICE_NAME); service soulstone."""
    resource = Resource.create({})
    name = str(resource.attributes.get("service.name", ""))
    if not name or name.startswith("unknown_service"):
        resource = resource.merge(Resource({"service.name": SERVICE}))
    return resource


def start_tracing(target: Target, log: Any) -> OtlpTracer:
    """A tracer exporting to the target's URL (queue, batch and timeout from OTEL_* variables)."""
    # The SDK logs every failed batch and every dropped span; the exporter above logs once.
    sdk_log = logging.getLogger("opentelemetry")
    sdk_log.addHandler(logging.NullHandler())
    sdk_log.propagate = False
    exporter = LoggedExporter(OTLPSpanExporter(endpoint=target.url), target.url, log)
    processor = BatchSpanProcessor(exporter)
    return OtlpTracer(processor, exporter, service_resource())
