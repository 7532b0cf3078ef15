"""Streams carry whole tool calls only: deltas held per index, sent once complete and valid."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from soulstone.tools.calls import Validators
from soulstone.tools.policy import default_policy
from soulstone.tools.stream import ToolStream


def event(delta: dict[str, Any], finish: str | None = None) -> bytes:
    chunk = {"id": "c1", "object": "chat.completion.chunk", "model": "m",
             "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}  # fmt: skip
    return b"data: " + json.dumps(chunk).encode() + b"\n\n"


def call_delta(index: int, text: str, name: str | None = None) -> bytes:
    part: dict[str, Any] = {"index": index, "function": {"arguments": text}}
    if name:
        part |= {"id": f"call_{index}", "type": "function"}
        part["function"]["name"] = name
    return event({"tool_calls": [part]})


def feed(stream: ToolStream, pieces: list[bytes], cut: int = 7, ending: bytes = b"\n") -> bytes:
    """What the stream sends for these events (their line ends made `ending`), fed `cut` bytes
    at a time."""
    raw = (b"".join(pieces) + b"data: [DONE]\n\n").replace(b"\n", ending)
    out = b""
    for start in range(0, len(raw), cut):  # arbitrary network chunking
        out += stream.feed(raw[start : start + cut])
    return out + stream.finish()


def run(
    stream: ToolStream, pieces: list[bytes], cut: int = 7, ending: bytes = b"\n"
) -> list[dict[str, Any]]:
    """The events the stream sends, decoded."""
    out = feed(stream, pieces, cut, ending)
    events = [e.removeprefix(b"data: ") for e in out.split(b"\n\n") if e]
    return [{"done": True} if e == b"[DONE]" else json.loads(e) for e in events]


def test_interleaved_calls_one_char_at_a_time_one_invalid() -> None:
    valid_a = json.dumps({"label": "name", "value": "Ada"})
    valid_b = json.dumps({"label": "x"})
    invalid = json.dumps({"label": 7})
    pieces = [event({"role": "assistant"}), event({"content": "Let me "})]
    pieces += [call_delta(0, "", "store_core"), call_delta(1, "", "fetch_core"),
               call_delta(2, "", "fetch_core")]  # fmt: skip
    for position in range(max(len(valid_a), len(valid_b), len(invalid))):
        for index, text in enumerate((valid_a, valid_b, invalid)):
            if position < len(text):
                pieces.append(call_delta(index, text[position]))
        if position == 3:
            pieces.append(event({"content": "check."}))
    pieces.append(event({}, finish="tool_calls"))
    events = run(ToolStream(Validators(default_policy())), pieces)
    contents = [e["choices"][0]["delta"].get("content") for e in events
                if "choices" in e and e["choices"][0]["delta"].get("content")]  # fmt: skip
    assert contents == ["Let me ", "check."]  # unchanged and in order
    calls = [e["choices"][0]["delta"]["tool_calls"] for e in events
             if "choices" in e and e["choices"][0]["delta"].get("tool_calls")]  # fmt: skip
    assert [c[0]["index"] for c in calls] == [1, 0] or [c[0]["index"] for c in calls] == [0, 1]
    for sent in calls:
        assert len(sent) == 1
        json.loads(sent[0]["function"]["arguments"])  # complete JSON, in one chunk
    assert {c[0]["function"]["arguments"] for c in calls} == {valid_a, valid_b}
    errors = [e for e in events if "error" in e]
    assert len(errors) == 1 and errors[0]["index"] == 2
    assert errors[0]["error"] == "TOOL_CALL_INVALID"
    finish = [i for i, e in enumerate(events) if "choices" in e
              and e["choices"][0]["finish_reason"] == "tool_calls"]  # fmt: skip
    assert finish and finish[0] < events.index(errors[0]) < len(events) - 1
    assert events[-1] == {"done": True}


def test_an_incomplete_call_is_an_error_before_done() -> None:
    pieces = [call_delta(0, '{"label": "unfinished', "fetch_core")]
    events = run(ToolStream(Validators(default_policy())), pieces)
    assert (
        events[0]["error"] == "TOOL_CALL_INVALID"
        and "never became complete" in (events[0]["message"])
    )
    assert events[-1] == {"done": True}


ARGUMENTS = st.fixed_dictionaries(
    {"label": st.text(max_size=20), "value": st.text(max_size=40)},
    optional={"request_heartbeat": st.booleans()},
)


ENDINGS = st.sampled_from([b"\n", b"\r\n", b"\r"])


@settings(max_examples=200, deadline=None)
@given(ARGUMENTS, st.lists(st.integers(min_value=1, max_value=30), min_size=1, max_size=20),
       st.integers(min_value=1, max_value=50), ENDINGS)  # fmt: skip
def test_random_splits_reassemble_the_same_call(
    arguments: dict[str, Any], sizes: list[int], cut: int, ending: bytes
) -> None:
    text = json.dumps(arguments, ensure_ascii=False)
    pieces, position = [call_delta(0, "", "store_core")], 0
    for size in sizes * (len(text) // max(1, sum(sizes)) + 1):
        if position >= len(text):
            break
        pieces.append(call_delta(0, text[position : position + size]))
        position += size
    events = run(ToolStream(Validators(default_policy())), pieces, cut=cut, ending=ending)
    [sent] = [e for e in events if "choices" in e]
    call = sent["choices"][0]["delta"]["tool_calls"][0]
    assert json.loads(call["function"]["arguments"]) == arguments
    assert call["function"]["name"] == "store_core" and call["id"] == "call_0"


@settings(max_examples=150, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=12), min_size=1, max_size=30))
def test_hermes_text_becomes_whole_calls_at_any_split(sizes: list[int]) -> None:
    text = ('Sure. <tool_call>{"name": "fetch_core", "arguments": {"label": "x"}}</tool_call>'
            " and <tool_call>not json</tool_call> done <tool")  # fmt: skip
    pieces, position = [], 0
    for size in sizes * (len(text) // sum(sizes) + 1):
        if position >= len(text):
            break
        pieces.append(event({"content": text[position : position + size]}))
        position += size
    events = run(ToolStream(Validators(default_policy()), hermes=True), pieces, cut=11)
    content = "".join(e["choices"][0]["delta"].get("content") or "" for e in events
                      if "choices" in e)  # fmt: skip
    assert content == "Sure.  and  done <tool"  # the held-back "<tool" goes out at the end
    calls = [e["choices"][0]["delta"]["tool_calls"][0] for e in events
             if "choices" in e and e["choices"][0]["delta"].get("tool_calls")]  # fmt: skip
    assert len(calls) == 1 and calls[0]["function"]["name"] == "fetch_core"
    assert json.loads(calls[0]["function"]["arguments"]) == {"label": "x"}
    errors = [e for e in events if "error" in e]
    assert len(errors) == 1 and "not a tool call" in errors[0]["message"]


@pytest.mark.parametrize("ending", [b"\r\n", b"\r"])
@pytest.mark.parametrize("cut", [1, 2, 7, 1000])
def test_crlf_and_cr_streams_give_the_same_events(ending: bytes, cut: int) -> None:
    pieces = [event({"role": "assistant"}), event({"content": "Hi"}),
              call_delta(0, '{"label": ', "fetch_core"), call_delta(0, '"x"}'),
              b": keep-alive\n\n", event({}, finish="tool_calls")]  # fmt: skip
    expected = feed(ToolStream(Validators(default_policy())), pieces)
    assert feed(ToolStream(Validators(default_policy())), pieces, cut, ending) == expected
    frames = expected.split(b"\n\n")
    assert frames[3] == b": keep-alive" and frames[-2:] == [b"data: [DONE]", b""]
    whole = json.loads(frames[2].removeprefix(b"data: "))["choices"][0]["delta"]["tool_calls"]
    assert whole[0]["function"] == {"name": "fetch_core", "arguments": '{"label": "x"}'}


@pytest.mark.parametrize("ending", [b"\n", b"\r\n", b"\r"])
def test_content_passes_at_once_whatever_the_line_ends(ending: bytes) -> None:
    stream = ToolStream(Validators(default_policy()))
    first = event({"content": "Hi"}).replace(b"\n", ending)
    out = stream.feed(first[:-1]) + stream.feed(first[-1:])
    assert json.loads(out.removeprefix(b"data: "))["choices"][0]["delta"] == {"content": "Hi"}
