"""Server-sent events framing: any chunking and any line ends give the same events."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from soulstone.sse import Event, SSEReader, encode_data, parse_event


def read(chunks: list[bytes]) -> list[Event]:
    reader = SSEReader()
    events = [event for chunk in chunks for event in reader.feed(chunk)]
    return events + reader.finish()


def fields(events: list[Event]) -> list[tuple[bytes | None, bytes | None]]:
    return [(event.data, event.name) for event in events]


def reference(stream: bytes, close: bool = True) -> list[tuple[bytes | None, bytes | None]]:
    """The WHATWG algorithm, one byte at a time (what the reader must agree with).

    With `close`, a last event without its empty line counts, as `finish()` does.
    """
    stream = stream.removeprefix(b"\xef\xbb\xbf")
    lines: list[bytes] = []
    line, index = bytearray(), 0
    while index < len(stream):
        byte = stream[index : index + 1]
        if byte in (b"\r", b"\n"):
            lines.append(bytes(line))
            line.clear()
            index += 2 if stream[index : index + 2] == b"\r\n" else 1
        else:
            line += byte
            index += 1
    if line and close:
        lines.append(bytes(line))
    if close:
        lines.append(b"")
    out: list[tuple[bytes | None, bytes | None]] = []
    data: list[bytes] | None = None
    name: bytes | None = None
    seen = False
    for text in lines:
        if not text:
            if seen:
                out.append((None if data is None else b"\n".join(data), name))
            data, name, seen = None, None, False
            continue
        seen = True
        if text.startswith(b":"):
            continue
        field, colon, value = text.partition(b":")
        value = value[1:] if colon and value.startswith(b" ") else value
        if field == b"data":
            data = [*(data or []), value]
        elif field == b"event":
            name = value
    return out


def test_lf_events_in_one_chunk() -> None:
    stream = b'data: {"a":1}\n\ndata:{"b":2}\n\n: keep-alive\n\ndata: [DONE]\n\n'
    events = read([stream])
    assert [e.data for e in events] == [b'{"a":1}', b'{"b":2}', None, b"[DONE]"]
    assert [e.raw for e in events] == [b'data: {"a":1}', b'data:{"b":2}', b": keep-alive",
                                       b"data: [DONE]"]  # fmt: skip
    assert b"".join(e.frame() for e in events) == stream


def test_a_crlf_split_across_chunks_is_one_line_end() -> None:
    chunks = [b"data: a\r", b"\n\r", b"\ndata: b\r\n\r", b"\n", b"data: c\r\n\r\n"]
    events = read(chunks)
    assert [e.data for e in events] == [b"a", b"b", b"c"]
    assert [e.raw for e in events] == [b"data: a", b"data: b", b"data: c"]


def test_a_lone_cr_ends_an_event_at_once() -> None:
    reader = SSEReader()
    assert [e.data for e in reader.feed(b"data: a\r\r")] == [b"a"]  # no waiting for a \n
    assert reader.feed(b"data: b") == []
    assert [e.data for e in reader.feed(b"\r\r")] == [b"b"]
    assert reader.finish() == []


def test_blank_lines_between_events_are_not_part_of_them() -> None:
    events = read([b"data: a\n\n\n\ndata: b\n\n", b"\n\r\n: c\r\n\r\n"])
    assert [e.raw for e in events] == [b"data: a", b"data: b", b": c"]


def test_multiline_data_comments_names_and_one_space() -> None:
    stream = b"event: delta\r\ndata:  two\r: note\rdata\ndata: x:y\n\n"
    [event] = read([stream])
    assert event.data == b" two\n\nx:y" and event.name == b"delta"
    assert event.raw == stream[:-2]
    assert parse_event(event.raw) == event


def test_finish_returns_an_unclosed_last_event_and_drops_a_bom() -> None:
    assert fields(read([b"\xef\xbb", b"\xbfdata: a\n\ndata: b"])) == [(b"a", None), (b"b", None)]
    assert read([b"\n\n\n"]) == [] and read([]) == []


def test_encode_data_reads_back() -> None:
    for payload in (b'{"x": 1}', b"", b" lead", b"two\nlines", b"cr\r\nlf"):
        [event] = read([encode_data(payload)])
        assert event.data == payload.replace(b"\r\n", b"\n")
    assert encode_data(b"[DONE]") == b"data: [DONE]\n\n"


TEXT = st.text(st.characters(blacklist_characters="\r\n", blacklist_categories=["Cs"]),
               max_size=12).map(str.encode)  # fmt: skip
LINE = st.one_of(
    st.builds(lambda v: b"data:" + v, TEXT),
    st.builds(lambda v: b"data: " + v, TEXT),
    st.builds(lambda v: b"event: " + v, TEXT),
    st.builds(lambda v: b":" + v, TEXT),
    st.just(b"data"),
    st.just(b"id: 7"),
)
ENDING = st.sampled_from([b"\n", b"\r\n", b"\r"])
EVENTS = st.lists(st.lists(st.tuples(LINE, ENDING), min_size=1, max_size=4), max_size=6)
CLOSERS = st.lists(st.lists(ENDING, min_size=1, max_size=3), min_size=6, max_size=6)


def serialise(events: list[list[tuple[bytes, bytes]]], closers: list[list[bytes]]) -> bytes:
    """Lines with their ends, each event closed by empty lines (never `\\r` then `\\n`)."""
    out = b""
    for lines, blanks in zip(events, closers, strict=False):
        for line, ending in lines:
            out += line + ending
        for blank in blanks:
            out += b"\r\n" if out.endswith(b"\r") and blank == b"\n" else blank
    return out


def cut(stream: bytes, sizes: list[int]) -> list[bytes]:
    chunks, position = [], 0
    for size in sizes * (len(stream) + 1):
        if position >= len(stream):
            break
        chunks.append(stream[position : position + size])
        position += size
    return chunks


@settings(max_examples=400, deadline=None)
@given(EVENTS, CLOSERS,
       st.lists(st.integers(min_value=0, max_value=9), min_size=1, max_size=12))  # fmt: skip
def test_any_chunking_and_any_line_ends_give_the_same_events(
    events: list[list[tuple[bytes, bytes]]], closers: list[list[bytes]], sizes: list[int]
) -> None:
    stream = serialise(events, closers)
    plain = serialise([[(line, b"\n") for line, _ in lines] for lines in events], [[b"\n"]] * 6)
    expected = reference(plain)
    assert len(expected) == len(events)
    got = read(cut(stream, [max(1, s) for s in sizes]) if stream else [])
    assert fields(got) == expected == reference(stream)
    assert fields(read([stream])) == expected
    assert fields(read([e.frame() for e in got])) == expected  # frames forward losslessly
    assert all(parse_event(e.raw) == e for e in got)
    assert not any(e.raw[:1] in b"\r\n" or e.raw[-1:] in b"\r\n" for e in got)


STREAM = st.one_of(
    st.binary(max_size=60),
    st.lists(st.sampled_from([b"\n", b"\r", b"data: x", b"data:", b":", b" ", b"event:e", b"\xef"]),
             max_size=30).map(b"".join),
)  # fmt: skip


@settings(max_examples=400, deadline=None)
@given(STREAM, st.lists(st.integers(min_value=1, max_value=7), min_size=1))
def test_any_bytes_any_chunking_agree_with_the_reference(stream: bytes, sizes: list[int]) -> None:
    reader, got, position = SSEReader(), list[Event](), 0
    for chunk in cut(stream, sizes):
        got += reader.feed(chunk)
        position += len(chunk)
        assert fields(got) == reference(stream[:position], close=False)  # nothing held back
    assert fields(got + reader.finish()) == reference(stream)
