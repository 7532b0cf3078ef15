"""The request path in process: outcomes, what it holds and releases, limits, budgets, chains."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from dispatch.conftest import OWN_PEER, USAGE_TOTAL, BuildRig, Rig, peer
from soulstone.dispatch.call import Answer, Call, Rejection
from soulstone.dispatch.events import Chunk, Done, Event, ToolCall
from soulstone.dispatch.stream import Stream
from soulstone.guard.clients import ClientDecl, ClientsDecl, GatewayDecl
from soulstone.tools.policy import HeartbeatLimits, Policy

CHAT: dict[str, Any] = {"model": "m", "messages": [{"role": "user", "content": "hi there"}]}
PING_TOOL = {"type": "function", "function": {"name": "ping", "parameters": {"type": "object"}}}


def answer_of(outcome: object) -> dict[str, Any]:
    assert isinstance(outcome, Answer), outcome
    assert outcome.status == 200, outcome.body
    document: dict[str, Any] = json.loads(outcome.body)
    return document


def refusal_of(outcome: object, status: int, code: str) -> Rejection:
    assert isinstance(outcome, Rejection), outcome
    assert (outcome.refusal.status, outcome.refusal.code) == (status, code), outcome.refusal
    return outcome


async def stream_of(rig: Rig, document: dict[str, Any], **options: Any) -> Stream:
    outcome = await rig.enter({**document, "stream": True}, **options)
    assert isinstance(outcome, Stream), outcome
    return outcome


async def drain(stream: Stream) -> list[Event]:
    async with stream:
        return [event async for event in stream]


async def test_a_plain_chat_is_answered_and_releases_everything(build_rig: BuildRig) -> None:
    rig = await build_rig()
    answer = answer_of(await rig.enter(CHAT))
    assert answer["choices"][0]["message"]["content"] == "tok0 tok1"
    assert rig.engine.last["messages"] == CHAT["messages"]
    assert rig.runtime.starts == 1  # the engine was manifested for the first request
    rig.assert_nothing_held()


async def test_a_stream_gives_chunks_then_done_and_closing_releases_everything(
    build_rig: BuildRig,
) -> None:
    rig = await build_rig()
    small = rig.client("small")
    stream = await stream_of(rig, CHAT, caller=peer(4001))
    assert rig.services.guard.slots.in_flight == 1  # held while the stream is open
    assert rig.services.scheduler.in_flight() == 1
    assert rig.services.guard.limiter.in_flight(small) == 1
    events = await drain(stream)
    assert [type(e) for e in events] == [Chunk] * (len(events) - 1) + [Done]
    data = b"".join(e.data for e in events if isinstance(e, Chunk))
    assert data.count(b'"delta"') == rig.engine.chunks and data.endswith(b"data: [DONE]\n\n")
    done = events[-1]
    assert isinstance(done, Done) and done.total_tokens == USAGE_TOTAL
    rig.assert_nothing_held(small)


async def test_answers_read_to_their_end_leave_the_engine_connection_for_the_next(
    build_rig: BuildRig,
) -> None:
    rig = await build_rig()
    for _ in range(2):
        await drain(await stream_of(rig, CHAT))
        answer_of(await rig.enter(CHAT))
    assert len(rig.engine.connections) == 1  # one keep-alive connection served all four


async def test_a_whole_tool_call_is_a_typed_event_of_its_own(build_rig: BuildRig) -> None:
    rig = await build_rig()
    tools = [{"type": "function", "function": {"name": "ping", "parameters": {}}}]
    asked = {**CHAT, "tools": tools, "messages": [{"role": "user", "content": "CALL:stream"}]}
    events = await drain(await stream_of(rig, asked))
    calls = [e for e in events if isinstance(e, ToolCall)]
    assert len(calls) == 1  # two argument deltas held, then sent as one whole call
    sent = [json.loads(e.removeprefix(b"data: ")) for e in calls[0].data.split(b"\n\n")
            if e.startswith(b"data: {")]  # fmt: skip
    whole = [c["delta"]["tool_calls"][0] for event in sent for c in event.get("choices", [])
             if c.get("delta", {}).get("tool_calls")]  # fmt: skip
    assert len(whole) == 1
    assert json.loads(whole[0]["function"]["arguments"]) == {"request_heartbeat": False}
    assert not any(b"tool_calls" in e.data for e in events
                   if isinstance(e, Chunk) and not isinstance(e, ToolCall))  # fmt: skip
    rig.assert_nothing_held()


async def test_a_stream_closed_before_it_is_read_releases_everything_and_the_engine(
    build_rig: BuildRig,
) -> None:
    rig = await build_rig()
    rig.engine.chunks, rig.engine.chunk_bytes = 2000, 4096  # far more than socket buffers hold
    small = rig.client("small")
    stream = await stream_of(rig, CHAT, caller=peer(4001))
    assert rig.engine.streams_open == 1
    await stream.aclose()
    rig.assert_nothing_held(small)
    # The engine's request ends too: nobody is left reading it, so it must not stay blocked.
    await asyncio.wait_for(rig.engine.stream_ended.wait(), 10)
    assert rig.engine.streams_open == 0
    answer_of(await rig.enter(CHAT))  # and the path still serves


async def test_a_stream_left_after_a_few_events_releases_everything(build_rig: BuildRig) -> None:
    rig = await build_rig()
    rig.engine.chunks, rig.engine.chunk_bytes = 2000, 4096
    small = rig.client("small")
    async with await stream_of(rig, CHAT, caller=peer(4001)) as stream:
        async for event in stream:
            assert isinstance(event, Chunk)
            break
    rig.assert_nothing_held(small)
    await asyncio.wait_for(rig.engine.stream_ended.wait(), 10)


@pytest.mark.parametrize(
    ("caller", "document", "status", "code"),
    [
        (peer(4999), CHAT, 401, "UNAUTHORIZED"),
        (peer(4003), CHAT, 403, "MODEL_FORBIDDEN"),  # `narrow` may use only "n"
        (peer(4001), {**CHAT, "model": "nobody-serves-this"}, 404, "MODEL_NOT_FOUND"),
        (peer(4001), b'{"model": "m", "messages": [', 400, "INVALID_JSON"),
        (peer(4001), b"[1, 2]", 400, "INVALID_JSON"),
    ],
)
async def test_early_refusals_are_rejections_that_hold_nothing(
    build_rig: BuildRig, caller: Any, document: Any, status: int, code: str
) -> None:
    rig = await build_rig()
    rejection = refusal_of(await rig.enter(document, caller=caller), status, code)
    assert rig.engine.received == []
    assert rig.bodies_read == (0 if status == 401 else 1)  # nobody's body is read
    rig.assert_nothing_held(rig.client("small"), rig.client("narrow"))
    assert rig.services.guard.limiter.tokens(rig.client("small")) == 0  # nothing reserved
    if status == 401:
        assert rejection.refusal.headers == {"WWW-Authenticate": "Bearer"}


async def test_tokens_are_reserved_at_admission_and_settled_to_the_engines_usage(
    build_rig: BuildRig,
) -> None:
    rig = await build_rig()
    small, limiter = rig.client("small"), rig.services.guard.limiter
    ask = {**CHAT, "max_tokens": 60}
    prompt = 2 + 4  # the fake engine counts words plus 4 per message
    first = await stream_of(rig, ask, caller=peer(4001))
    assert limiter.tokens(small) == prompt + 60  # the worst case, held while it runs
    second = await stream_of(rig, ask, caller=peer(4001))
    assert limiter.tokens(small) == 2 * (prompt + 60)  # 132 of 150
    third = await stream_of(rig, ask, caller=peer(4001))  # 132 < 150: admitted
    refused = refusal_of(await rig.enter(ask, caller=peer(4001)), 429, "TOKEN_RATE_LIMITED")
    assert refused.refusal.retry_after is not None
    for stream in (first, second, third):
        await drain(stream)
    assert limiter.tokens(small) == 3 * USAGE_TOTAL  # settled to what the engine reported
    answer_of(await rig.enter(ask, caller=peer(4001)))  # room again
    assert limiter.tokens(small) == 4 * USAGE_TOTAL
    rig.clock.advance(60)  # the minute passes
    assert limiter.tokens(small) == 0
    rig.assert_nothing_held(small)


async def test_a_reservation_that_left_the_window_is_not_taken_off_twice(
    build_rig: BuildRig,
) -> None:
    rig = await build_rig()
    small, limiter = rig.client("small"), rig.services.guard.limiter
    stream = await stream_of(rig, {**CHAT, "max_tokens": 60}, caller=peer(4001))
    rig.clock.advance(61)  # the reservation leaves the window while the stream runs
    assert limiter.tokens(small) == 0
    await drain(stream)
    assert limiter.tokens(small) == 0  # never negative: a later request is not credited
    answer_of(await rig.enter({**CHAT, "max_tokens": 60}, caller=peer(4001)))
    assert limiter.tokens(small) == USAGE_TOTAL


HEARTBEAT_POLICY = Policy(heartbeat=HeartbeatLimits(max_chain_depth=1, heartbeat_rps_limit=100))
TWO_USERS = ClientsDecl(clients={"alice": ClientDecl(users=[4101]),
                                 "bob": ClientDecl(users=[4102])})  # fmt: skip


async def test_heartbeat_chains_are_kept_per_client_and_session(build_rig: BuildRig) -> None:
    rig = await build_rig(TWO_USERS, HEARTBEAT_POLICY)
    alice, bob = peer(4101), peer(4102)
    beat = {**CHAT, "tools": [PING_TOOL],
            "messages": [{"role": "user", "content": "CALL:heartbeat"}]}  # fmt: skip
    plain = {**CHAT, "tools": [PING_TOOL]}
    answer_of(await rig.enter(beat, caller=alice, session="s1"))  # opens alice's chain
    assert list(rig.services.heartbeats.chains) == ["alice\0s1"]
    for _ in range(3):  # bob's session of the same name is neither counted nor ends it
        answer_of(await rig.enter(plain, caller=bob, session="s1"))
    assert list(rig.services.heartbeats.chains) == ["alice\0s1"]
    answer_of(await rig.enter(beat, caller=alice, session="s1"))  # depth 1: the limit
    refusal_of(await rig.enter(beat, caller=alice, session="s1"), 429,
               "HEARTBEAT_DEPTH_EXCEEDED")  # fmt: skip
    answer_of(await rig.enter(plain, caller=bob, session="s1"))
    rig.assert_nothing_held()


async def test_a_council_personas_calls_leave_the_callers_heartbeat_chain_alone(
    build_rig: BuildRig,
) -> None:
    rig = await build_rig(TWO_USERS, HEARTBEAT_POLICY)
    alice = peer(4101)
    beat = {**CHAT, "tools": [PING_TOOL],
            "messages": [{"role": "user", "content": "CALL:heartbeat"}]}  # fmt: skip
    answer_of(await rig.enter(beat, caller=alice, session="s1"))  # opens alice's chain
    chain = rig.services.heartbeats.chains["alice\0s1"]
    client = rig.client("alice")
    for persona in ("maat", "thoth"):  # a plain answer would end the chain; these do not
        persona_call = Call("chat", {**CHAT, "tools": [PING_TOOL]}, client, f"c.{persona}",
                            "s1", council="pantheon", persona=persona)  # fmt: skip
        answer_of(await rig.path.dispatch(persona_call))
    assert rig.services.heartbeats.chains == {"alice\0s1": chain}
    rig.assert_nothing_held()


async def test_every_length_field_goes_to_the_engine_as_one_max_tokens(
    build_rig: BuildRig,
) -> None:
    rig = await build_rig()
    answer_of(await rig.enter({**CHAT, "max_tokens": 5, "n_predict": 400}))
    assert rig.engine.last["max_tokens"] == 5
    assert "n_predict" not in rig.engine.last
    answer_of(await rig.enter({**CHAT, "max_completion_tokens": 7, "max_tokens": 30}))
    assert rig.engine.last["max_tokens"] == 7
    assert "max_completion_tokens" not in rig.engine.last


async def test_n_answers_together_must_fit_the_output_budget(build_rig: BuildRig) -> None:
    rig = await build_rig()
    refused = refusal_of(await rig.enter({**CHAT, "n": 4, "max_tokens": 600}), 400,
                         "TOKEN_BUDGET_EXCEEDED")  # fmt: skip
    assert refused.refusal.extra["limit"] == 2048
    assert refused.refusal.extra["max_tokens"] == 600
    assert rig.engine.received == []
    rig.assert_nothing_held()


async def test_a_length_field_over_the_budget_is_refused_whichever_it_is(
    build_rig: BuildRig,
) -> None:
    rig = await build_rig()
    document = {"model": "m", "prompt": "hello", "max_completion_tokens": 10, "max_tokens": 5000}
    refused = refusal_of(await rig.enter(document, endpoint="completions"), 400,
                         "TOKEN_BUDGET_EXCEEDED")  # fmt: skip
    assert refused.refusal.extra["max_tokens"] == 5000
    chat = {**CHAT, "max_tokens": 10, "n_predict": 5000}
    refusal_of(await rig.enter(chat), 400, "TOKEN_BUDGET_EXCEEDED")
    assert rig.engine.received == []
    rig.assert_nothing_held()


async def test_a_missing_max_tokens_is_set_within_the_budget(build_rig: BuildRig) -> None:
    rig = await build_rig(ClientsDecl(gateway=GatewayDecl(max_context_tokens=100,
                                                          max_output_tokens=64)))  # fmt: skip
    answer_of(await rig.enter(CHAT))
    assert rig.engine.last["max_tokens"] == 64  # the output limit
    long = {**CHAT, "messages": [{"role": "user", "content": "word " * 80}]}
    answer_of(await rig.enter(long))
    assert rig.engine.last["max_tokens"] == 100 - (80 + 4)  # what the context leaves
    answer_of(await rig.enter({**CHAT, "n": 4}))
    assert rig.engine.last["max_tokens"] == 16  # four answers share the output limit


async def test_the_body_goes_as_it_came_unless_a_field_must_change(build_rig: BuildRig) -> None:
    rig = await build_rig()
    exact = b'{ "model" : "m",  "messages": [], "max_tokens": 9 }'
    answer_of(await rig.enter(exact))
    assert rig.engine.raw[-1] == exact  # byte for byte: nothing re-encoded
    spaced = b'{"model": "m", "messages": [{"role": "user", "content": "hi"}]}\n'
    answer_of(await rig.enter(spaced))
    assert rig.engine.raw[-1].startswith(spaced[:-2])  # only max_tokens written in
    assert rig.engine.last == {**json.loads(spaced), "max_tokens": 2048}
    answer_of(await rig.enter({**CHAT, "max_tokens": 5, "n_predict": 400}))
    assert "n_predict" not in rig.engine.last  # a field removed: the document re-encoded


async def test_the_owner_is_served_without_limits(build_rig: BuildRig) -> None:
    rig = await build_rig()
    for number in range(3):
        answer_of(await rig.enter({**CHAT, "max_tokens": 2000}, caller=OWN_PEER,
                                  request_id=f"r{number}"))  # fmt: skip
    rig.assert_nothing_held()
