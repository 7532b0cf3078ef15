"""A test OTLP/HTTP collector: decodes ExportTraceServiceRequest bodies, and waits for spans.

`otlp_receiver` starts one on a free loopback port (in a thread of the test
process) and stops it after the test. Tests wait on what it received
(`wait_for`, woken by every POST, with a deadline), never on a clock.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span

KINDS = {Span.SPAN_KIND_INTERNAL: "internal", Span.SPAN_KIND_SERVER: "server",
         Span.SPAN_KIND_CLIENT: "client"}  # fmt: skip


def _plain(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [_plain(item) for item in value.array_value.values]
    return getattr(value, kind) if kind else None


@dataclass
class ReceivedSpan:
    """One span as the collector got it (ids in hex, attributes as Python values)."""

    name: str
    trace_id: str
    span_id: str
    parent_id: str
    kind: str
    start: int
    end: int
    attributes: dict[str, Any]
    events: list[tuple[str, int]]
    status: int
    remote_parent: bool
    service: str

    @classmethod
    def of(cls, span: Span, service: str) -> ReceivedSpan:
        return cls(span.name, span.trace_id.hex(), span.span_id.hex(), span.parent_span_id.hex(),
                   KINDS.get(span.kind, str(span.kind)), span.start_time_unix_nano,
                   span.end_time_unix_nano, {a.key: _plain(a.value) for a in span.attributes},
                   [(e.name, e.time_unix_nano) for e in span.events], span.status.code,
                   bool(span.flags & 0x200), service)  # fmt: skip


@dataclass
class Receiver:
    """What the collector received; `status` is what it answers (set 500 to play a broken one)."""

    port: int = 0
    status: int = 200
    bodies: list[bytes] = field(default_factory=list)
    spans: list[ReceivedSpan] = field(default_factory=list)
    posts: int = 0
    changed: threading.Condition = field(default_factory=threading.Condition)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def take(self, body: bytes) -> int:
        request = ExportTraceServiceRequest.FromString(body)
        with self.changed:
            self.posts += 1
            self.bodies.append(body)
            if self.status == 200:
                for resource_spans in request.resource_spans:
                    service = next((_plain(a.value) for a in resource_spans.resource.attributes
                                    if a.key == "service.name"), "")  # fmt: skip
                    for scope_spans in resource_spans.scope_spans:
                        self.spans += [ReceivedSpan.of(s, service) for s in scope_spans.spans]
            self.changed.notify_all()
        return self.status

    def wait_for(self, found: Callable[[Receiver], Any], timeout: float = 20) -> Any:
        """Wait until `found(self)` is truthy (checked after every POST); its value."""
        deadline = time.monotonic() + timeout
        with self.changed:
            while True:
                value = found(self)
                if value:
                    return value
                left = deadline - time.monotonic()
                if left <= 0:
                    names = sorted({(s.name, s.attributes.get("request_id")) for s in self.spans},
                                   key=str)  # fmt: skip
                    raise AssertionError(f"the collector did not get it in {timeout} s; "
                                         f"{self.posts} posts, spans: {names}")  # fmt: skip
                self.changed.wait(left)

    def request_span(self, request_id: str, timeout: float = 20) -> ReceivedSpan:
        """The request span of this request id, once it arrived."""
        span: ReceivedSpan = self.wait_for(lambda r: next(
            (s for s in r.spans if s.name == "soulstone.request"
             and s.attributes.get("request_id") == request_id), None), timeout)  # fmt: skip
        return span

    def trace(self, trace_id: str) -> list[ReceivedSpan]:
        """Every span received so far of this trace."""
        with self.changed:
            return [s for s in self.spans if s.trace_id == trace_id]

    def children(self, parent: ReceivedSpan) -> dict[str, ReceivedSpan]:
        """The spans directly under this one, by name (the last of each name)."""
        return {s.name: s for s in self.trace(parent.trace_id) if s.parent_id == parent.span_id}


def _handler(receiver: Receiver) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            status = receiver.take(body) if self.path == "/v1/traces" else 404
            self.send_response(status)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            return

    return Handler


@contextmanager
def running_receiver() -> Iterator[Receiver]:
    """A collector on a free loopback port, shut down when the block ends."""
    receiver = Receiver()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(receiver))
    server.daemon_threads = True
    receiver.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, name="otlp-receiver", daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


@pytest.fixture
def otlp_receiver() -> Iterator[Receiver]:
    """A collector for one test."""
    with running_receiver() as receiver:
        yield receiver
