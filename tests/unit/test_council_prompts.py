"""What council personas are asked, and how a run's events are written (pure)."""

from __future__ import annotations

from typing import Any

import orjson

from soulstone.council.door import ChatShape, api_event
from soulstone.council.events import Answered, FinalText, Finished, Judged, PersonaAnswer, Routed
from soulstone.council.models import Council, Persona
from soulstone.council.prompts import (
    aggregator_messages,
    answer_label,
    last_user_text,
    member_messages,
    router_messages,
    veto_messages,
)
from soulstone.council.route import Verdict
from soulstone.dispatch.call import Call
from soulstone.guard.clients import OWNER

MAAT = Persona(name="maat", model="m", system="You are Ma'at.", tags=("truth",))
THOTH = Persona(name="thoth", model="m", system="You are Thoth.")
COUNCIL = Council(name="pantheon", personas=("maat", "thoth"), aggregator="thoth")
QUESTION = [{"type": "text", "text": "Is a promise binding?"}]
ASKED: list[dict[str, Any]] = [{"role": "system", "content": "Be brief."},
                               {"role": "user", "content": QUESTION}]  # fmt: skip


def test_anonymous_labels_run_past_z() -> None:
    assert [answer_label(i, "x", True) for i in (0, 1, 25, 26, 27)] == [
        "Answer A", "Answer B", "Answer Z", "Answer AA", "Answer AB"]  # fmt: skip
    assert answer_label(3, "maat", False) == "maat"


def test_a_member_gets_its_system_prompt_memories_the_conversation_and_a_veto() -> None:
    messages = member_messages(MAAT, ASKED, ["rivers flow"], ("the draft", "too long"))
    assert messages[0]["role"] == "system"
    assert messages[0]["content"].startswith("You are Ma'at.")
    assert "- rivers flow" in messages[0]["content"]
    assert messages[1:3] == ASKED  # the caller's own messages, unchanged
    assert messages[3] == {"role": "assistant", "content": "the draft"}
    assert "vetoed: too long" in messages[4]["content"]
    assert member_messages(Persona(name="bare", model="m"), ASKED) == ASKED


def test_the_aggregator_sees_the_question_and_every_answer_labelled() -> None:
    answers = [("maat", "yes"), ("thoth", "no")]
    [system, user] = aggregator_messages(THOTH, ASKED, answers, anonymous=False)
    assert system == {"role": "system", "content": "You are Thoth."}
    assert "Is a promise binding?" in user["content"]
    assert "[maat]\nyes" in user["content"] and "[thoth]\nno" in user["content"]
    [_, hidden] = aggregator_messages(THOTH, ASKED, answers, anonymous=True)
    assert "[Answer A]\nyes" in hidden["content"] and "maat" not in hidden["content"]


def test_the_veto_and_the_router_see_what_they_judge() -> None:
    [_, judged] = veto_messages(MAAT, ASKED, "a draft", 2)
    assert "Draft (round 2):\na draft" in judged["content"]
    [_, routing] = router_messages(THOTH, COUNCIL, [MAAT, THOTH], ASKED)
    assert "- maat (truth)" in routing["content"] and "- thoth" in routing["content"]
    assert last_user_text(ASKED) == "Is a promise binding?"


def test_api_events_are_named_server_sent_events() -> None:
    answer = PersonaAnswer("maat", "m", "yes", 12.5, 3, 1)
    assert api_event(Routed(1, ("maat",), None)) == (
        b'event: routed\ndata: {"round":1,"personas":["maat"],"fallback":null}\n\n'
    )
    name, data = api_event(Answered(1, answer)).split(b"\n", 1)  # type: ignore[union-attr]
    assert name == b"event: answer"
    assert orjson.loads(data.removeprefix(b"data: ")) == {"round": 1, **answer.document()}
    assert api_event(Judged(1, Verdict("veto", "no"))) == (
        b'event: veto\ndata: {"round":1,"verdict":"veto","reason":"no"}\n\n'
    )
    assert api_event(FinalText("hi")) == b'event: final\ndata: {"content":"hi"}\n\n'
    assert api_event(Finished({})) is None


def test_a_council_model_answers_in_chat_completion_shapes() -> None:
    call = Call("chat", {"model": "council/pantheon", "stream_options": {"include_usage": True}},
                OWNER, "req-9", stream=True)  # fmt: skip
    shape = ChatShape(call, "pantheon")
    usage = {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
    result = {"final": {"persona": "thoth", "content": "yes"}, "usage": usage}
    whole = shape.whole(result)
    assert whole["model"] == "council/pantheon" and whole["object"] == "chat.completion"
    assert whole["choices"][0]["message"] == {"role": "assistant", "content": "yes"}
    piece = orjson.loads(shape.event(FinalText("ye")).removeprefix(b"data: "))  # type: ignore[union-attr]
    assert piece["choices"][0]["delta"] == {"content": "ye"}
    tail = shape.event(Finished(result))
    assert tail is not None
    stop, with_usage = (orjson.loads(p.removeprefix(b"data: ")) for p in tail.split(b"\n\n")[:2])
    assert stop["choices"][0]["finish_reason"] == "stop"
    assert with_usage["choices"] == [] and with_usage["usage"] == usage
    progress = shape.event(Answered(1, PersonaAnswer("maat", "m", "x", 1)))
    assert progress is not None and progress.startswith(b": ")  # a comment: a keep-alive
