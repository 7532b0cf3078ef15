"""OTLP's ExportTraceServiceRequest written as protobuf bytes directly, from SDK spans.

The SDK's encoder builds a protobuf object per span, attribute and value;
for this gateway's small spans that is most of what tracing costs. Here the
wire format is written as bytes (opentelemetry/proto/trace/v1/trace.proto),
and an attribute's bytes are remembered: a model, client, status or token
count repeats from request to request. The result parses into the very
message the SDK's encoder makes (a test compares them). Links and trace
state, which this gateway never sets, are not written.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Any

from soulstone.observe.trace import Notes

_CACHE_SIZE = 4096  # remembered attributes; the cache starts over when full
_SMALL = [bytes((n,)) for n in range(128)]
_FIXED64 = struct.Struct("<Q").pack
_TIMES = struct.Struct("<BQBQ").pack  # start (field 7) and end (field 8), fixed64 each
_DOUBLE = struct.Struct("<d").pack
_FIXED32 = struct.Struct("<I").pack
_FLAGS_TAG = b"\x85\x01"  # Span.flags: field 16, fixed32
_HAS_REMOTE, _IS_REMOTE = 0x100, 0x200  # SpanFlags: the parent's is-remote bit is known / set
_KINDS = {0: 1, 1: 2, 2: 3, 3: 4, 4: 5}  # SDK SpanKind value -> OTLP Span.SpanKind
_INTERNAL, _CLIENT = 1, 3  # OTLP Span.SpanKind of a phase
_UNSET = 0
_PLAIN = b"\x7a\x00"  # an UNSET status, present and empty (as the SDK writes it)


def _varint(number: int) -> bytes:
    if 0 <= number < 128:
        return _SMALL[number]
    if number < 0:
        number += 1 << 64  # int64: two's complement, ten bytes
    out = bytearray()
    while number > 0x7F:
        out.append((number & 0x7F) | 0x80)
        number >>= 7
    out.append(number)
    return bytes(out)


def _utf8(text: str) -> bytes:
    """Text as protobuf strings must be: valid UTF-8 (a lone surrogate becomes `?`)."""
    return text.encode("utf-8", "replace")


def _field(tag: bytes, payload: bytes) -> bytes:
    """A length-delimited field: its tag, the payload's length, the payload."""
    return tag + _varint(len(payload)) + payload


def _any_value(value: Any) -> bytes:
    if isinstance(value, str):
        return _field(b"\x0a", _utf8(value))
    if isinstance(value, bool):
        return b"\x10\x01" if value else b"\x10\x00"
    if isinstance(value, int):
        return b"\x18" + _varint(value)
    if isinstance(value, float):
        return b"\x21" + _DOUBLE(value)
    if isinstance(value, bytes):
        return _field(b"\x3a", value)
    if isinstance(value, Sequence):
        return _field(b"\x2a", b"".join(_field(b"\x0a", _any_value(v)) for v in value))
    raise TypeError(f"a span attribute cannot be a {type(value).__name__}")


class SpanEncoder:
    """Encodes batches of spans; remembers attribute bytes (one per exporter thread)."""

    def __init__(self) -> None:
        self._attributes: dict[tuple[bytes, str, type, Any], bytes] = {}
        self._names: dict[tuple[str, int], bytes] = {}  # a span's name and kind fields
        self._outcomes: dict[tuple[int, str | None], bytes] = {}  # its status field
        self._heads: dict[tuple[int, int], tuple[Any, Any, tuple[bytes, bytes]]] = {}

    def _attribute(self, tag: bytes, key: str, value: Any) -> bytes:
        """One KeyValue as an entry of a repeated `attributes` field (`tag`)."""
        cacheable = not isinstance(value, list)
        if cacheable:
            remembered = self._attributes.get((tag, key, type(value), value))
            if remembered is not None:
                return remembered
        encoded = _field(b"\x0a", _utf8(key))
        encoded = _field(tag, encoded + _field(b"\x12", _any_value(value)))
        if cacheable:
            if len(self._attributes) >= _CACHE_SIZE:
                self._attributes.clear()
            self._attributes[(tag, key, type(value), value)] = encoded
        return encoded

    def _attributes_of(self, tag: bytes, attributes: Any) -> list[bytes]:
        attribute = self._attribute
        return [attribute(tag, key, value) for key, value in attributes.items()]

    def _name(self, name: str, kind: int) -> bytes:
        """A span's name and (OTLP) kind fields."""
        encoded = self._names.get((name, kind))
        if encoded is None:
            encoded = _field(b"\x2a", _utf8(name)) + b"\x30" + _SMALL[kind]
            if len(self._names) < _CACHE_SIZE:
                self._names[(name, kind)] = encoded
        return encoded

    def _outcome(self, code: int, description: str | None) -> bytes:
        """A span's status field."""
        encoded = self._outcomes.get((code, description))
        if encoded is None:
            body = _field(b"\x12", _utf8(description)) if description else b""
            if code != _UNSET:
                body += b"\x18" + _varint(code)
            encoded = _field(b"\x7a", body)
            if len(self._outcomes) < _CACHE_SIZE:
                self._outcomes[(code, description)] = encoded
        return encoded

    def span(self, span: Any) -> bytes:
        """One Span message."""
        context = span.context
        parts = [b"\x0a\x10", context.trace_id.to_bytes(16, "big"),
                 b"\x12\x08", context.span_id.to_bytes(8, "big")]  # fmt: skip
        parent = span.parent
        flags = _HAS_REMOTE
        if parent is not None:
            parts += (b"\x22\x08", parent.span_id.to_bytes(8, "big"))
            if parent.is_remote:
                flags |= _IS_REMOTE
        parts += (self._name(span.name, _KINDS[span.kind.value]),
                  _TIMES(0x39, span.start_time or 0, 0x41, span.end_time or 0))  # fmt: skip
        attributes = span.attributes
        if attributes:
            parts += self._attributes_of(b"\x4a", attributes)
        for event in span.events:
            body = [b"\x09", _FIXED64(event.timestamp), _field(b"\x12", _utf8(event.name))]
            if event.attributes:
                body += self._attributes_of(b"\x1a", event.attributes)
            parts.append(_field(b"\x5a", b"".join(body)))
        status = span.status
        parts += (self._outcome(status.status_code.value, status.description), _FLAGS_TAG,
                  _FIXED32(flags))  # fmt: skip
        return b"".join(parts)

    def phases(self, notes: Notes, end: int) -> list[bytes]:
        """The Span messages of a request's phases: children of its span; open ones end at `end`."""
        trace = notes.trace_id.to_bytes(16, "big")
        parent = b"\x22\x08" + notes.span_id.to_bytes(8, "big")
        local = _FLAGS_TAG + _FIXED32(_HAS_REMOTE)
        ns, out = notes.ns, []
        for phase in notes.phases:
            finished = ns(phase.end) if phase.end is not None else end
            parts = [b"\x0a\x10", trace, b"\x12\x08", phase.span_id.to_bytes(8, "big"), parent,
                     self._name(phase.name, _CLIENT if phase.client else _INTERNAL),
                     _TIMES(0x39, ns(phase.start), 0x41, finished)]  # fmt: skip
            if phase.attributes:
                parts += self._attributes_of(b"\x4a", phase.attributes)
            for name, moment in phase.events:
                parts.append(_field(b"\x5a", b"\x09" + _FIXED64(ns(moment))
                                    + _field(b"\x12", _utf8(name))))  # fmt: skip
            parts += (_PLAIN, local)
            out.append(b"".join(parts))
        return out

    def _head(self, resource: Any, scope: Any) -> tuple[bytes, bytes]:
        """The `resource` field of a ResourceSpans and the `scope` field of a ScopeSpans."""
        key = (id(resource), id(scope))
        known = self._heads.get(key)
        if known is not None and known[0] is resource and known[1] is scope:
            return known[2]
        resource_field = _field(
            b"\x0a", b"".join(self._attributes_of(b"\x0a", resource.attributes))
        )
        scope_fields = b""
        if scope is not None:
            scope_fields = _field(b"\x0a", _utf8(scope.name))
            if scope.version:
                scope_fields += _field(b"\x12", _utf8(scope.version))
            if scope.attributes:
                scope_fields += b"".join(self._attributes_of(b"\x1a", scope.attributes))
        fields = (resource_field, _field(b"\x0a", scope_fields))
        self._heads[key] = (resource, scope, fields)
        return fields

    def encode(self, spans: Sequence[Any]) -> bytes:
        """The serialized ExportTraceServiceRequest of these spans (grouped by resource, scope).

        A span carrying `notes` (a request's span) is preceded by its phases' spans.
        """
        groups: dict[int, dict[int, list[bytes]]] = {}
        objects: dict[int, Any] = {}
        for span in spans:
            resource, scope = span.resource, span.instrumentation_scope
            objects[id(resource)], objects[id(scope)] = resource, scope
            group = groups.setdefault(id(resource), {}).setdefault(id(scope), [])
            notes = getattr(span, "notes", None)
            if notes is not None:
                group += self.phases(notes, span.end_time)
            group.append(self.span(span))
        out = []
        for resource_id, scopes in groups.items():
            resource = objects[resource_id]
            resource_field, body = b"", []
            for scope_id, encoded in scopes.items():
                scope = objects[scope_id]
                resource_field, scope_field = self._head(resource, scope)
                scope_spans = [scope_field] + [_field(b"\x12", span) for span in encoded]
                if scope is not None and scope.schema_url:
                    scope_spans.append(_field(b"\x1a", _utf8(scope.schema_url)))
                body.append(_field(b"\x12", b"".join(scope_spans)))
            schema = (_field(b"\x1a", _utf8(resource.schema_url))
                      if resource.schema_url else b"")  # fmt: skip
            out.append(_field(b"\x0a", resource_field + b"".join(body) + schema))
        return b"".join(out)
