"""A council as the request path's callers see it: the council API and the `council/NAME` model.

`POST /v1/council/{name}` answers the result object of SPEC C8, or its event
stream (`routed`, `answer`, `draft`, `veto`, `final`, then `[DONE]`). The
model name `council/{name}` on `/v1/chat/completions` (and the WebSocket)
answers as a plain chat completion of the final answer, streamed as normal
chunks when asked. Both come back as the request path's outcomes (Answer or
Stream), so every way in writes them as it writes an engine's answer.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

import orjson

from soulstone.council.convene import Convener, conversation_of
from soulstone.council.events import (
    Answered,
    CouncilEvent,
    Drafted,
    FinalText,
    Finished,
    Judged,
    Routed,
)
from soulstone.dispatch.call import Answer, Call
from soulstone.dispatch.events import Chunk, Event, Failure
from soulstone.dispatch.forward import Progress
from soulstone.dispatch.path import Outcome
from soulstone.dispatch.stream import Stream
from soulstone.errors import Refusal
from soulstone.guard.clients import Client

COUNCIL_PREFIX = "council/"
SSE_DONE = b"data: [DONE]\n\n"


def council_name(call: Call) -> str:
    """The council a call asks: the API's path name, or the model after `council/`."""
    if call.council is not None:
        return call.council
    return str(call.document.get("model", ""))[len(COUNCIL_PREFIX) :]


def _sse(name: str, document: dict[str, Any]) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(document) + b"\n\n"


def api_event(event: CouncilEvent) -> bytes | None:
    """One event of the council API's stream (None for the run's closing result)."""
    if isinstance(event, Routed):
        return _sse("routed", {"round": event.round, "personas": list(event.personas),
                               "fallback": event.fallback})  # fmt: skip
    if isinstance(event, Answered):
        return _sse("answer", {"round": event.round, **event.answer.document()})
    if isinstance(event, Drafted):
        return _sse("draft", {"round": event.round, "persona": event.persona,
                              "content": event.content})  # fmt: skip
    if isinstance(event, Judged):
        return _sse("veto", {"round": event.round, "verdict": event.verdict.verdict,
                             "reason": event.verdict.reason})  # fmt: skip
    if isinstance(event, FinalText):
        return _sse("final", {"content": event.text})
    return None


class ChatShape:
    """The final answer as OpenAI chat completion (whole) or chat.completion.chunk events."""

    def __init__(self, call: Call, name: str) -> None:
        self.id = f"chatcmpl-council-{call.request_id}"
        self.model = f"{COUNCIL_PREFIX}{name}"
        self.created = int(time.time())
        options = call.document.get("stream_options")
        self.include_usage = isinstance(options, dict) and options.get("include_usage") is True

    def whole(self, result: dict[str, Any]) -> dict[str, Any]:
        """The chat completion of a finished run."""
        message = {"role": "assistant", "content": result["final"]["content"]}
        return {"id": self.id, "object": "chat.completion", "created": self.created,
                "model": self.model, "choices": [{"index": 0, "message": message,
                                                  "finish_reason": "stop"}],
                "usage": result["usage"]}  # fmt: skip

    def chunk(self, delta: dict[str, Any], finish: str | None = None,
              usage: dict[str, Any] | None = None) -> bytes:  # fmt: skip
        """One `chat.completion.chunk` event."""
        document: dict[str, Any] = {
            "id": self.id, "object": "chat.completion.chunk", "created": self.created,
            "model": self.model,
            "choices": [] if usage is not None else [{"index": 0, "delta": delta,
                                                      "finish_reason": finish}],
        }  # fmt: skip
        if usage is not None:
            document["usage"] = usage
        return b"data: " + orjson.dumps(document) + b"\n\n"

    def event(self, event: CouncilEvent) -> bytes | None:
        """One council event as chat chunks (progress as SSE comments, a keep-alive)."""
        if isinstance(event, FinalText):
            return self.chunk({"content": event.text})
        if isinstance(event, Finished):
            tail = self.chunk({}, "stop")
            if self.include_usage:
                tail += self.chunk({}, usage=event.result["usage"])
            return tail
        if isinstance(event, Answered):
            return f": {event.answer.persona} answered\n\n".encode()
        if isinstance(event, Routed):
            return self.chunk({"role": "assistant", "content": ""}) if event.round == 1 else None
        return None


class CouncilDoor:
    """Answers the request path's council calls with its outcomes."""

    def __init__(self, convener: Convener) -> None:
        self.convener = convener

    def names(self, client: Client | None = None) -> list[str]:
        """The model names (`council/NAME`) of every council, or of those a client may ask.

        A client may ask a council when it may use every persona's model.
        """
        councils = self.convener.councils
        return [f"{COUNCIL_PREFIX}{name}" for name, council in sorted(councils.councils.items())
                if client is None or all(client.may_use(councils.personas[p].model)
                                         for p in council.roles())]  # fmt: skip

    async def answer(self, call: Call) -> Outcome:
        """Run the council a call asks for; Refusal before anything runs when it cannot."""
        name = council_name(call)
        council = self.convener.council(name)
        conversation_of(call.document)
        self.convener.check_allowed(council, call)
        chat = call.endpoint != "council"
        events = self.convener.run(council, call)
        shape = ChatShape(call, name) if chat else None
        if not call.stream:
            result: dict[str, Any] = {}
            async with contextlib.aclosing(events):
                async for event in events:
                    if isinstance(event, Finished):
                        result = event.result
            body = shape.whole(result) if shape is not None else result
            return Answer(200, orjson.dumps(body))
        return Stream(self._stream(events, shape), lambda: None, "text/event-stream",
                      call.flat_errors, Progress())  # fmt: skip

    async def _stream(self, events: AsyncGenerator[CouncilEvent, None],
                      shape: ChatShape | None) -> AsyncIterator[Event]:  # fmt: skip
        async with contextlib.aclosing(events):
            try:
                async for event in events:
                    data = shape.event(event) if shape is not None else api_event(event)
                    if data:
                        yield Chunk(data)
            except Refusal as refusal:
                yield Failure(refusal)  # the transport writes the error, then [DONE]
                return
        yield Chunk(SSE_DONE)
