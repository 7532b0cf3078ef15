"""Server-sent events framing (pure): bytes in chunks -> whole events, and back.

Follows the WHATWG event-stream rules: a line ends with `\\n`, `\\r\\n` or
`\\r`; an event ends at an empty line; a line starting with `:` is a comment;
`field: value` loses one space after the colon; the `data` lines of an event
are joined by `\\n`. A `\\r\\n` split across two chunks is one line end, not
two. One deliberate leniency: `SSEReader.finish` returns a last event that
the stream left without its empty line (engines that stop mid-frame still
get their last word through), where a browser would drop it.
"""

from __future__ import annotations

import re
from typing import NamedTuple

LINE_END = re.compile(rb"\r\n|\r|\n")
BOM = b"\xef\xbb\xbf"
_new = tuple.__new__  # builds an Event without the Python-level __new__ (the hot path)


class Event(NamedTuple):
    """One event: its bytes as received, and what its fields say.

    `raw` is the event's lines exactly as they came, with the line ends
    between them but without the last line's end and the empty line that
    closed it; `frame()` puts a `\\n\\n` back. `data` is None when the event
    has no `data` line (a comment, a keep-alive), else the joined values.
    `name` is the `event:` field, None when absent.
    """

    raw: bytes
    data: bytes | None
    name: bytes | None = None

    def frame(self) -> bytes:
        """The event ready to forward: its raw bytes and an empty line."""
        return self.raw + b"\n\n"


def _value(line: bytes, colon: int) -> bytes:
    value = line[colon + 1 :]
    return value[1:] if value[:1] == b" " else value


def _parse(raw: bytes, lines: list[bytes]) -> Event:
    """The fields of one event whose lines are `lines` (no line ends)."""
    data: list[bytes] | None = None
    name: bytes | None = None
    for line in lines:
        colon = line.find(b":")
        if colon == 0:
            continue  # a comment
        field, value = (line, b"") if colon < 0 else (line[:colon], _value(line, colon))
        if field == b"data":
            if data is None:
                data = [value]
            else:
                data.append(value)
        elif field == b"event":
            name = value
    return Event(raw, None if data is None else b"\n".join(data), name)


def _event_lf(raw: bytes) -> Event:
    """One event whose lines end with `\\n` only (the fast path)."""
    if raw[:5] == b"data:" and b"\n" not in raw:
        return _new(Event, (raw, _value(raw, 4), None))
    return _parse(raw, raw.split(b"\n"))


def parse_event(raw: bytes) -> Event:
    """The event made of these lines (any line ends, no empty line among them)."""
    if b"\r" in raw:
        return _parse(raw, LINE_END.split(raw))
    return _event_lf(raw)


class SSEReader:
    """Cuts one event stream, fed chunk by chunk as it arrives, into whole events.

    Any way of cutting the same bytes into chunks gives the same events.
    Not thread-safe: one reader per stream, fed by one task.
    """

    __slots__ = ("_parts", "_started")

    def __init__(self) -> None:
        self._parts: list[bytes] = []  # the unfinished event, as it came
        self._started = False  # the byte-order mark, if any, is behind us

    def feed(self, chunk: bytes) -> list[Event]:
        """The events this chunk completes, in order (often none, often several)."""
        if not chunk:
            return []
        if not self._started:
            chunk = self._drop_bom(chunk)
            if not self._started:
                return []
        if self._parts and b"\n" not in chunk and b"\r" not in chunk:
            self._parts.append(chunk)  # inside a line: nothing can end here
            return []
        if self._parts:
            self._parts.append(chunk)
            buffer = b"".join(self._parts)
            self._parts.clear()
        else:
            buffer = chunk
        if b"\r" in buffer:
            return self._slow(buffer)
        blocks = buffer.split(b"\n\n")
        rest = blocks.pop()
        if rest:
            self._parts.append(rest)
        if buffer.count(b"\n") == 2 * len(blocks):  # no line ends but the separators
            return [_new(Event, (block, block[6:], None)) if block[:6] == b"data: "
                    else _event_lf(block) for block in blocks if block]  # fmt: skip
        events: list[Event] = []
        for block in blocks:
            if block[:1] == b"\n":
                block = block.lstrip(b"\n")  # blank lines between events
            if block:
                events.append(_event_lf(block))
        return events

    def finish(self) -> list[Event]:
        """The events still held when the stream ended, an unclosed last one included."""
        events = self.feed(b"\n\n") if self._parts else []
        self._parts.clear()
        return events

    def _drop_bom(self, chunk: bytes) -> bytes:
        """Hold the first bytes until they cannot be a byte-order mark, then drop one."""
        head = b"".join(self._parts) + chunk
        if len(head) < len(BOM) and BOM.startswith(head):
            self._parts[:] = [head]
            return b""
        self._parts.clear()
        self._started = True
        return head[len(BOM) :] if head.startswith(BOM) else head

    def _slow(self, buffer: bytes) -> list[Event]:
        """Events from a buffer with `\\r` in it: line by line.

        A `\\r` that ends the buffer after a line stays buffered, so that a `\\n`
        in the next chunk makes one `\\r\\n` with it; one that closes an event
        does not, as a `\\n` after it is only an empty line between events.
        """
        events: list[Event] = []
        event_start = line_start = content_end = 0
        for match in LINE_END.finditer(buffer):
            start = match.start()
            if start != line_start:
                content_end, line_start = start, match.end()
                continue
            if line_start > event_start:  # an empty line closes the event
                raw = buffer[event_start:content_end]
                events.append(_parse(raw, LINE_END.split(raw)))
            event_start = line_start = match.end()
        if event_start < len(buffer):
            self._parts.append(buffer[event_start:])
        return events


def encode_data(payload: bytes) -> bytes:
    """One event carrying `payload` as its data (`data: ...` lines and an empty line)."""
    if b"\n" in payload or b"\r" in payload:
        return b"".join(b"data: " + line + b"\n" for line in LINE_END.split(payload)) + b"\n"
    return b"data: " + payload + b"\n\n"
