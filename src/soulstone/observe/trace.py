"""Request traces (SPEC C9): where tracing goes, W3C trace context, and one request's notes.

Light on purpose: no OpenTelemetry here. With tracing off the request path
holds no Notes at all; with it on, it writes down, as plain values, the ids
and the phases that happened (times from `time.perf_counter`), and a Tracer
(`observe.otlp`, which imports the SDK) turns them into spans once the
request is settled. Never any prompt text: attributes are ids, names, counts
and codes.
"""

from __future__ import annotations

import random
import time
from collections.abc import Mapping
from typing import NamedTuple, Protocol
from urllib.parse import urlsplit

from soulstone.errors import UsageError

TRACEPARENT = "traceparent"
ENDPOINT_FLAG = "--otlp-endpoint"
ENDPOINT_ENV = "OTEL_EXPORTER_OTLP_ENDPOINT"  # a base URL: /v1/traces is added
TRACES_ENDPOINT_ENV = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"  # the whole URL, as given
TRACES_PATH = "/v1/traces"
_HEX = frozenset("0123456789abcdef")

Attribute = str | int | float | bool


class Target(NamedTuple):
    """Where spans go: the OTLP/HTTP traces URL and the setting that asked for it."""

    url: str
    source: str  # `--otlp-endpoint` or the name of the variable


def _disabled(environ: Mapping[str, str]) -> bool:
    return (environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true"
            or environ.get("OTEL_TRACES_EXPORTER", "").strip().lower() == "none")  # fmt: skip


def _checked(url: str, source: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UsageError(f"{source}: {url!r} is not an http:// or https:// URL of an OTLP/HTTP "
                         "collector (e.g. http://127.0.0.1:4318)")  # fmt: skip
    return url


def traces_target(flag: str | None, environ: Mapping[str, str]) -> Target | None:
    """Where to export spans, or None when tracing is off (the default).

    `--otlp-endpoint URL` (a collector's base URL, like
    OTEL_EXPORTER_OTLP_ENDPOINT) wins; then OTEL_EXPORTER_OTLP_TRACES_ENDPOINT
    (the whole traces URL), then OTEL_EXPORTER_OTLP_ENDPOINT. The standard
    OTEL_SDK_DISABLED=true or OTEL_TRACES_EXPORTER=none turn the variables
    off (not the flag). UsageError naming the setting when a URL is not one.
    """
    if flag:
        return Target(_with_path(_checked(flag.strip(), ENDPOINT_FLAG)), ENDPOINT_FLAG)
    if _disabled(environ):
        return None
    whole = environ.get(TRACES_ENDPOINT_ENV, "").strip()
    if whole:
        return Target(_checked(whole, TRACES_ENDPOINT_ENV), TRACES_ENDPOINT_ENV)
    base = environ.get(ENDPOINT_ENV, "").strip()
    if base:
        return Target(_with_path(_checked(base, ENDPOINT_ENV)), ENDPOINT_ENV)
    return None


def _with_path(base: str) -> str:
    """A collector's base URL with the traces path added (unless it is there already)."""
    base = base.rstrip("/")
    return base if base.endswith(TRACES_PATH) else base + TRACES_PATH


def shown_url(url: str) -> str:
    """A URL fit for a log line: scheme, host, port and path (no user, password or query)."""
    parts = urlsplit(url)
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{parts.hostname}{port}{parts.path}"


# -- W3C trace context ---------------------------------------------------------------------


class SpanRef(NamedTuple):
    """A span others hang under: its trace, its id, sampled or not, from another process or not."""

    trace_id: int
    span_id: int
    sampled: bool = True
    remote: bool = False


def parse_traceparent(value: str | None) -> SpanRef | None:
    """The caller's span from a W3C `traceparent` header; None when absent or malformed."""
    if not value:
        return None
    parts = value.strip().split("-")
    if len(parts) < 4:
        return None
    version, trace, span, flags = parts[:4]
    if (len(version) != 2 or len(trace) != 32 or len(span) != 16 or len(flags) != 2
            or version == "ff" or (version == "00" and len(parts) != 4)
            or not _HEX.issuperset(version + trace + span + flags)):  # fmt: skip
        return None
    trace_id, span_id = int(trace, 16), int(span, 16)
    if not trace_id or not span_id:
        return None
    return SpanRef(trace_id, span_id, bool(int(flags, 16) & 1), remote=True)


def traceparent(trace_id: int, span_id: int, sampled: bool = True) -> str:
    """A W3C `traceparent` value naming this span."""
    return f"00-{trace_id:032x}-{span_id:016x}-{'01' if sampled else '00'}"


def new_span_id() -> int:
    """A random, non-zero 64-bit span id."""
    return random.getrandbits(64) or 1


def new_trace_id() -> int:
    """A random, non-zero 128-bit trace id."""
    return random.getrandbits(128) or 1


# -- one request's notes --------------------------------------------------------------------


class Phase:
    """A child span of the request, as noted: name, times (perf_counter), attributes, events.

    `end` is None while it lasts; a phase still open when the request is
    settled ends then.
    """

    __slots__ = ("attributes", "client", "end", "events", "name", "span_id", "start")

    def __init__(self, name: str, start: float, end: float | None,
                 attributes: dict[str, Attribute], span_id: int = 0,
                 client: bool = False) -> None:  # fmt: skip
        self.name, self.start, self.end = name, start, end
        self.attributes = attributes
        self.span_id = span_id or new_span_id()
        self.client = client  # a call to another process (an engine): span kind CLIENT
        self.events: list[tuple[str, float]] = []


class Notes:
    """One request's trace, written down along the request path (only while tracing is on).

    The request's own span hangs under `parent` (a caller's `traceparent`, or
    a council's span for a persona's call), or starts a new trace.
    """

    __slots__ = ("parent", "perf", "phases", "sampled", "span_id", "trace_id", "upstream", "wall")

    def __init__(self, parent: SpanRef | None) -> None:
        self.parent = parent
        self.trace_id = parent.trace_id if parent is not None else new_trace_id()
        self.sampled = parent.sampled if parent is not None else True
        self.span_id = new_span_id()
        self.wall, self.perf = time.time_ns(), time.perf_counter()
        self.phases: list[Phase] = []
        self.upstream: Phase | None = None

    def ns(self, moment: float) -> int:
        """A perf_counter() moment of this request as nanoseconds since the epoch."""
        return self.wall + round((moment - self.perf) * 1e9)

    def add(self, name: str, start: float, **attributes: Attribute) -> None:
        """A phase that happened, from `start` until now."""
        self.phases.append(Phase(name, start, time.perf_counter(), attributes))

    def open(self, name: str, **attributes: Attribute) -> Phase:
        """A phase that starts now and ends later (or when the request is settled)."""
        phase = Phase(name, time.perf_counter(), None, attributes)
        self.phases.append(phase)
        return phase

    def child(self, phase: Phase) -> SpanRef:
        """The span of one of this request's phases, for what hangs under it."""
        return SpanRef(self.trace_id, phase.span_id, self.sampled)

    def upstream_header(self, soulstone: str, path: str, stream: bool) -> bytes:
        """Open the upstream phase; the `traceparent` header line naming it, for the engine."""
        phase = Phase("soulstone.upstream", time.perf_counter(), None,
                      {"soulstone": soulstone, "endpoint": path, "stream": stream},
                      client=True)  # fmt: skip
        self.phases.append(phase)
        self.upstream = phase
        flags = b"01" if self.sampled else b"00"
        return b"traceparent: 00-%032x-%016x-%s\r\n" % (self.trace_id, phase.span_id, flags)

    def answered(self, status: int, first_at: float | None = None, chunks: int = 0,
                 code: str | None = None) -> None:  # fmt: skip
        """The engine's answer ended: its status, first token (a stream's), chunks, failure."""
        phase = self.upstream
        if phase is None or phase.end is not None:
            return
        phase.end = time.perf_counter()
        phase.attributes["status"] = status
        if first_at is not None:
            phase.events.append(("first_token", first_at))
            phase.attributes["chunks"] = chunks
        if code is not None:
            phase.attributes["error_code"] = code

    def streamed(self, first_at: float | None, chunks: int, failure: str | None,
                 tool_calls: int | None, code: str | None) -> None:  # fmt: skip
        """A stream was closed: its upstream phase ends; its tool calls (when checked) were."""
        self.answered(200, first_at, chunks, failure)
        upstream = self.upstream
        if tool_calls is not None and upstream is not None:
            checks: dict[str, Attribute] = {"tool_calls": tool_calls}
            if code is not None:
                checks["error_code"] = code
            self.add("soulstone.tool_check", first_at or upstream.start, **checks)


class Tracer(Protocol):
    """Turns settled requests' notes into spans and sends them on (never blocking a request)."""

    def finish(self, notes: Notes, attributes: dict[str, Attribute], status: int) -> None:
        """The request was settled now: its span (and its phases') go out."""

    async def aclose(self, timeout_s: float) -> None:
        """Send what is still queued (waiting at most `timeout_s`), then stop."""
