"""What the request path notes for a trace: the phases that happened, the engine's header."""

from __future__ import annotations

import asyncio
from typing import Any

from dispatch.conftest import BuildRig
from soulstone.dispatch.call import Answer, Rejection
from soulstone.dispatch.stream import Stream
from soulstone.errors import Refusal
from soulstone.observe.trace import Attribute, Notes, parse_traceparent

CALLER = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
PING_TOOL = {"type": "function", "function": {"name": "ping", "parameters": {"type": "object"}}}


def chat(words: str, **extra: Any) -> dict[str, Any]:
    return {"model": "m", "messages": [{"role": "user", "content": words}], **extra}


class Recorder:
    """A tracer that keeps what the path settled."""

    def __init__(self) -> None:
        self.finished: list[tuple[Notes, dict[str, Attribute], int]] = []

    def finish(self, notes: Notes, attributes: dict[str, Attribute], status: int) -> None:
        self.finished.append((notes, attributes, status))

    async def aclose(self, timeout_s: float) -> None:
        return

    def phases(self, index: int = -1) -> dict[str, dict[str, Attribute]]:
        return {p.name: p.attributes for p in self.finished[index][0].phases}


async def test_untraced_requests_hold_no_notes_and_send_no_traceparent(
    build_rig: BuildRig,
) -> None:
    rig = await build_rig()
    assert isinstance(await rig.enter(chat("one"), headers={"traceparent": CALLER}), Answer)
    assert "traceparent" not in {k.lower() for k in rig.engine.headers[-1]}


async def test_a_request_notes_its_count_and_engine_call_and_continues_the_callers_trace(
    build_rig: BuildRig,
) -> None:
    recorder = Recorder()
    rig = await build_rig(tracer=recorder)
    for _ in range(2):  # the same prompt twice: the second count is cached, no phase
        outcome = await rig.enter(chat("two words"), headers={"traceparent": CALLER},
                                  session="s-1")  # fmt: skip
        assert isinstance(outcome, Answer)
    first, second = recorder.finished
    assert list(recorder.phases(0)) == ["soulstone.engine_start", "soulstone.token_count",
                                        "soulstone.upstream"]  # fmt: skip
    assert recorder.phases(0)["soulstone.engine_start"] == {"soulstone": "a", "wait": "engine",
                                                            "swapped": False}  # fmt: skip
    assert list(recorder.phases(1)) == ["soulstone.upstream"]
    notes, attributes, status = second
    assert notes.parent == parse_traceparent(CALLER) and status == 200
    assert attributes["request_id"] == "req-1" and attributes["conveyance_session_id"] == "s-1"
    assert attributes["client"] == "owner" and attributes["model"] == "m"
    assert attributes["total_tokens"] == 12 and attributes["completion_tokens"] == 8
    assert notes.upstream is not None
    sent = rig.engine.headers[-1]["traceparent"]
    assert sent == f"00-{CALLER[3:35]}-{notes.upstream.span_id:016x}-01"
    assert first[0].span_id != notes.span_id


async def test_a_request_that_waited_for_a_slot_notes_the_wait(build_rig: BuildRig) -> None:
    recorder = Recorder()
    rig = await build_rig(tracer=recorder)
    assert isinstance(await rig.enter(chat("the engine starts")), Answer)
    slots = rig.services.guard.slots
    slots.limit = 1
    assert slots.try_acquire()  # someone else holds the only slot
    waiting = asyncio.create_task(rig.enter(chat("three")))
    while not slots.waiting:
        await asyncio.sleep(0)  # let the request run until it queues
    slots.release()  # handed over to the waiting request
    assert isinstance(await waiting, Answer)
    phases = recorder.phases()
    assert list(phases) == ["soulstone.queue", "soulstone.token_count", "soulstone.upstream"]
    assert phases["soulstone.queue"] == {"wait": "slot"}
    rig.assert_nothing_held()


async def test_tool_calls_checked_in_an_answer_or_a_stream_are_a_phase(
    build_rig: BuildRig,
) -> None:
    recorder = Recorder()
    rig = await build_rig(tracer=recorder)
    whole = await rig.enter(chat("CALL:heartbeat", tools=[PING_TOOL]))
    assert isinstance(whole, Answer) and whole.status == 200
    assert recorder.phases()["soulstone.tool_check"] == {}
    stream = await rig.enter(chat("CALL:stream", tools=[PING_TOOL], stream=True))
    assert isinstance(stream, Stream)
    async with stream:
        assert [event async for event in stream]
    phases = recorder.phases()
    assert phases["soulstone.tool_check"] == {"tool_calls": 1}
    assert phases["soulstone.upstream"]["status"] == 200
    assert phases["soulstone.upstream"]["chunks"] == 4
    notes = recorder.finished[-1][0]
    assert notes.upstream is not None and [e for e, _ in notes.upstream.events] == ["first_token"]


async def test_refusals_are_settled_into_a_span_with_their_code(build_rig: BuildRig) -> None:
    recorder = Recorder()
    rig = await build_rig(tracer=recorder)
    refused = await rig.enter(chat("four", model="nothing-serves-this"))
    assert isinstance(refused, Rejection)
    notes, attributes, status = recorder.finished[-1]
    assert (status, attributes["error_code"]) == (404, "MODEL_NOT_FOUND") and notes.phases == []
    assert "model" not in attributes
    before = rig.path.refuse("ws-1", None, "websocket", Refusal(400, "BAD_FRAME", "no"), False)
    assert isinstance(before, Rejection)
    _, attributes, status = recorder.finished[-1]
    assert (attributes["request_id"], attributes["way"], status) == ("ws-1", "websocket", 400)
