"""What each persona of a council is asked (pure): members, router, aggregator, veto.

A member gets its own system prompt, the caller's conversation, the session's
recalled memories, and in a later round the vetoed draft with the reason. The
aggregator gets the question and every answer (by persona, or anonymously);
the veto persona the question and the draft; the router the question and the
council's personas with their tags.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from soulstone.council.models import Council, Persona

Message = dict[str, Any]


def last_user_text(messages: Sequence[Message]) -> str:
    """The text of the conversation's last user message ('' when there is none)."""
    for message in reversed(messages):
        if message.get("role") == "user":
            return content_text(message.get("content"))
    return ""


def content_text(content: Any) -> str:
    """A message's content as text (the text parts of a multi-part content)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = [p.get("text", "") for p in content if isinstance(p, dict)]
        return "\n".join(p for p in parts if isinstance(p, str))
    return ""


def _with_system(system: str, messages: Sequence[Message]) -> list[Message]:
    head: list[Message] = [{"role": "system", "content": system}] if system else []
    return [*head, *messages]


def member_messages(persona: Persona, conversation: Sequence[Message],
                    memories: Sequence[str] = (), vetoed: tuple[str, str] | None = None,
                    ) -> list[Message]:  # fmt: skip
    """A member persona's messages: its system prompt, memories, the conversation, a veto."""
    system = persona.system
    if memories:
        recalled = "\n".join(f"- {m}" for m in memories)
        system = f"{system}\n\nThe council remembers from this session:\n{recalled}".strip()
    messages = _with_system(system, conversation)
    if vetoed is not None:
        draft, reason = vetoed
        messages += [
            {"role": "assistant", "content": draft},
            {"role": "user", "content": f"The council's draft above was vetoed: {reason}\n"
                                        "Answer the question again."},
        ]  # fmt: skip
    return messages


def answer_label(index: int, persona: str, anonymous: bool) -> str:
    """How the aggregator sees an answer: the persona's name, or `Answer A`, `B`, …"""
    if not anonymous:
        return persona
    letters = ""
    index += 1
    while index:
        index, rest = divmod(index - 1, 26)
        letters = chr(ord("A") + rest) + letters
    return f"Answer {letters}"


def aggregator_messages(aggregator: Persona, conversation: Sequence[Message],
                        answers: Sequence[tuple[str, str]], anonymous: bool,
                        ) -> list[Message]:  # fmt: skip
    """The aggregator's messages: the question and every (persona, answer), labelled."""
    parts = [f"Question:\n{last_user_text(conversation)}", "Answers of the council:"]
    for index, (persona, content) in enumerate(answers):
        parts.append(f"[{answer_label(index, persona, anonymous)}]\n{content}")
    parts.append("Write the council's final answer to the question.")
    return _with_system(aggregator.system, [{"role": "user", "content": "\n\n".join(parts)}])


def veto_messages(veto: Persona, conversation: Sequence[Message], draft: str,
                  round_number: int) -> list[Message]:  # fmt: skip
    """The veto persona's messages: the question and the draft of this round."""
    text = (f"Question:\n{last_user_text(conversation)}\n\nDraft (round {round_number}):\n"
            f"{draft}\n\nAccept the draft, or veto it with the reason it must change. "
            'Answer as JSON: {"verdict": "accept" or "veto", "reason": "..."}.')  # fmt: skip
    return _with_system(veto.system, [{"role": "user", "content": text}])


def router_messages(router: Persona, council: Council, personas: Sequence[Persona],
                    conversation: Sequence[Message]) -> list[Message]:  # fmt: skip
    """The router persona's messages: the council's personas (with tags) and the question."""
    listed = "\n".join(
        f"- {p.name}" + (f" ({', '.join(p.tags)})" if p.tags else "")
        + (f": {p.description}" if p.description else "") for p in personas
    )  # fmt: skip
    cap = council.router.max_personas
    most = f"at most {cap}" if cap is not None else "any number"
    text = (f"Choose which of these personas should answer the question ({most}):\n{listed}\n\n"
            f"Question:\n{last_user_text(conversation)}\n\n"
            'Answer as JSON: {"personas": [names]}.')  # fmt: skip
    return _with_system(router.system, [{"role": "user", "content": text}])
