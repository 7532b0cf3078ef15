"""Whole tool calls only, in streams (pure): hold each call's deltas until its JSON is complete.

Content deltas pass through at once; tool-call deltas are gathered per index
and sent as one chunk once the arguments parse and fit the tool's schema; a
call that ends invalid (or incomplete) becomes an error event before
`data: [DONE]`. Events without tool calls pass through byte for byte (closed
by `\n\n`), in order, finish and usage chunks included. `soulstone.sse` cuts
the stream, so events may end their lines with `\n`, `\r\n` or `\r`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from soulstone.errors import Refusal
from soulstone.sse import Event, SSEReader, encode_data
from soulstone.tools.calls import Validators, asks_heartbeat

DONE = b"[DONE]"
OPEN, CLOSE = "<tool_call>", "</tool_call>"


@dataclass
class _HermesText:
    """Splits streamed content into plain text and `<tool_call>...</tool_call>` bodies."""

    buffer: str = ""
    inside: bool = False

    def feed(self, text: str) -> tuple[str, list[str]]:
        self.buffer += text
        out, calls = "", list[str]()
        while True:
            if not self.inside:
                start = self.buffer.find(OPEN)
                if start >= 0:
                    out += self.buffer[:start]
                    self.buffer, self.inside = self.buffer[start + len(OPEN) :], True
                    continue
                keep = next((n for n in range(len(OPEN) - 1, 0, -1)
                             if self.buffer.endswith(OPEN[:n])), 0)  # fmt: skip
                out += self.buffer[: len(self.buffer) - keep]
                self.buffer = self.buffer[len(self.buffer) - keep :]
                return out, calls
            end = self.buffer.find(CLOSE)
            if end < 0:
                return out, calls
            calls.append(self.buffer[:end])
            self.buffer, self.inside = self.buffer[end + len(CLOSE) :], False


@dataclass
class _Call:
    index: int
    id: str | None = None
    name: str = ""
    arguments: str = ""
    sent: bool = False
    problem: str | None = None


@dataclass
class ToolStream:
    """Rewrites one SSE stream so that tool calls arrive whole, validated."""

    validators: Validators
    calls: dict[int, _Call] = field(default_factory=dict)
    reader: SSEReader = field(default_factory=SSEReader)
    template: dict[str, Any] = field(default_factory=dict)  # id/model/created of the stream
    heartbeat: bool = False  # a whole call asked for a heartbeat
    sent_calls: int = 0  # whole, valid calls sent so far
    hermes: bool = False  # calls come as `<tool_call>` text in the content
    text: _HermesText = field(default_factory=_HermesText)
    unknown: str = "refuse"  # tools the policy does not name: "pass" checks only their JSON
    render_error: Callable[[Refusal], bytes] | None = None  # the caller's error shape

    def feed(self, chunk: bytes) -> bytes:
        """Bytes to send for this chunk of the engine's stream (maybe none yet)."""
        return b"".join(self._event(event) for event in self.reader.feed(chunk))

    def _event(self, sse: Event) -> bytes:
        data = (sse.data or b"").strip()
        if not data:  # a comment, a keep-alive, an empty event: as it came
            return sse.frame()
        if data == DONE:
            return self._leftover() + self._errors() + encode_data(DONE)
        try:
            event = orjson.loads(data)
        except orjson.JSONDecodeError:
            return sse.frame()
        choices = event.get("choices") if isinstance(event, dict) else None
        if self.hermes and choices and isinstance(choices[0], dict):
            rewritten = self._hermes(event, choices[0])
            if rewritten is not None:
                return rewritten
        deltas = [
            c.get("delta", {}).get("tool_calls") for c in choices or [] if isinstance(c, dict)
        ]
        if not any(deltas):
            return sse.frame()
        self.template = {k: event[k] for k in ("id", "object", "created", "model") if k in event}
        out = b""
        for choice in choices or []:
            delta = choice.get("delta", {})
            for part in delta.pop("tool_calls", None) or []:
                out += self._gather(part, choice.get("index", 0))
        keeps = any(
            c.get("delta") or c.get("finish_reason") is not None for c in choices or []
        ) or event.get("usage")
        if keeps:  # what is left (content, finish reason, usage) goes on at once
            out = encode_data(orjson.dumps(event)) + out
        return out

    def _gather(self, part: dict[str, Any], choice_index: int) -> bytes:
        index = int(part.get("index", 0))
        call = self.calls.setdefault(index, _Call(index))
        call.id = part.get("id") or call.id
        function = part.get("function") or {}
        call.name += function.get("name") or ""
        call.arguments += function.get("arguments") or ""
        if call.sent or call.problem is not None:
            if call.sent:
                call.problem = "more arguments came after the call was complete"
            return b""
        try:
            orjson.loads(call.arguments)
        except orjson.JSONDecodeError:
            return b""  # not complete yet
        call.problem = self.validators.problem(call.name, call.arguments, self.unknown)
        if call.problem is not None:
            return b""
        call.sent = True
        self.sent_calls += 1
        self.heartbeat = self.heartbeat or asks_heartbeat(call.arguments.encode())
        whole = {"index": index, "id": call.id, "type": "function",
                 "function": {"name": call.name, "arguments": call.arguments}}  # fmt: skip
        chunk = {**self.template, "choices": [{"index": choice_index, "finish_reason": None,
                                                "delta": {"tool_calls": [whole]}}]}  # fmt: skip
        return encode_data(orjson.dumps(chunk))

    def _hermes(self, event: dict[str, Any], choice: dict[str, Any]) -> bytes | None:
        """Rewrite content that carries `<tool_call>` text; None when there is none at stake."""
        delta = choice.get("delta") or {}
        content = delta.get("content")
        if not isinstance(content, str) or not (content or self.text.buffer):
            return None
        text, bodies = self.text.feed(content)
        self.template = {k: event[k] for k in ("id", "object", "created", "model") if k in event}
        out = b""
        delta["content"] = text
        if text or len(delta) > 1 or choice.get("finish_reason") is not None:
            if not text:
                delta.pop("content")
            out += encode_data(orjson.dumps(event))
        for body in bodies:
            index = len(self.calls)
            try:
                call = orjson.loads(body)
                name, arguments = str(call["name"]), call.get("arguments", {})
            except (orjson.JSONDecodeError, KeyError, TypeError):
                self.calls[index] = _Call(index, problem=f"not a tool call: {body[:80]!r}")
                continue
            text_arguments = arguments if isinstance(arguments, str) else orjson.dumps(
                arguments).decode()  # fmt: skip
            out += self._gather({"index": index, "id": f"call_{index}",
                                 "function": {"name": name, "arguments": text_arguments}},
                                choice.get("index", 0))  # fmt: skip
        return out

    def _leftover(self) -> bytes:
        """At the end: text held back as a possible tag goes out; an open call is an error."""
        if not self.hermes:
            return b""
        if self.text.inside:
            index = len(self.calls)
            self.calls[index] = _Call(index, problem="the <tool_call> text never closed")
            return b""
        if not self.text.buffer:
            return b""
        delta = {"content": self.text.buffer}
        chunk = {**self.template, "choices": [{"index": 0, "finish_reason": None, "delta": delta}]}
        self.text.buffer = ""
        return encode_data(orjson.dumps(chunk))

    def _errors(self) -> bytes:
        out = b""
        for call in sorted(self.calls.values(), key=lambda c: c.index):
            if call.sent and call.problem is None:
                continue
            problem = call.problem or "the arguments never became complete JSON"
            message = f"tool call {call.index} ({call.name or '?'}): {problem}"
            refusal = Refusal(502, "TOOL_CALL_INVALID", message, index=call.index)
            if self.render_error is not None:
                document = self.render_error(refusal)
            else:
                document = orjson.dumps({"error": refusal.code, "message": message,
                                         "index": call.index})  # fmt: skip
            out += encode_data(document)
        return out

    def finish(self) -> bytes:
        """What is still to send when the engine's stream ended (its last bytes)."""
        return b"".join(self._event(event) for event in self.reader.finish())
