"""A council run: route, ask the personas in waves, aggregate, veto, as a stream of events.

Every persona call is a Call on the one request path (C4a), made with the
caller's identity: the same permissions, limits, budgets, adapters and swaps
as an HTTP request, charged to the caller. A run holds no slot of its own, so
a council with more personas than `max_parallel` only queues, never deadlocks.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, Sequence
from typing import Any

import orjson

from soulstone.council.events import (
    Answered,
    CouncilEvent,
    Drafted,
    FinalText,
    Finished,
    Judged,
    PersonaAnswer,
    Round,
    Routed,
    Usage,
)
from soulstone.council.memory import ResonanceMemory
from soulstone.council.models import Council, Councils, Persona
from soulstone.council.plan import plan_waves
from soulstone.council.prompts import (
    Message,
    aggregator_messages,
    last_user_text,
    member_messages,
    router_messages,
    veto_messages,
)
from soulstone.council.resonance import SessionMemory, session_memory
from soulstone.council.route import (
    Verdict,
    parse_router_choice,
    parse_verdict,
    response_format,
    route_by_rules,
    router_schema,
    veto_schema,
)
from soulstone.dispatch.call import Answer, Call, Rejection
from soulstone.dispatch.events import Chunk, Failure
from soulstone.dispatch.path import RequestPath
from soulstone.dispatch.prepare import prepare
from soulstone.dispatch.stream import Stream
from soulstone.errors import Refusal
from soulstone.sse import SSEReader

ERROR_TEXT = 300  # characters of an engine's error kept in a persona's record


def conversation_of(document: dict[str, Any]) -> list[Message]:
    """The caller's messages, checked: a non-empty list of objects with a role."""
    messages = document.get("messages")
    if not isinstance(messages, list) or not messages:
        raise Refusal(400, "BAD_REQUEST", "a council needs `messages`: a non-empty list",
                      param="messages")  # fmt: skip
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise Refusal(400, "BAD_REQUEST", f"messages[{index}] is not a message with a role",
                          param=f"messages[{index}]")  # fmt: skip
    return messages


def _answer_text(body: bytes) -> tuple[str | None, int | None, int | None]:
    """A chat completion's first message content and its usage."""
    try:
        document = orjson.loads(body)
        choice = document["choices"][0]
        content = choice.get("message", {}).get("content")
    except (orjson.JSONDecodeError, KeyError, IndexError, TypeError, AttributeError):
        return None, None, None
    usage = document.get("usage") if isinstance(document.get("usage"), dict) else {}
    prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
    return (content if isinstance(content, str) else None,
            prompt if isinstance(prompt, int) else None,
            completion if isinstance(completion, int) else None)  # fmt: skip


def _delta_text(data: bytes) -> tuple[str, Any]:
    """The content of one streamed chat chunk, and its usage object when it carries one."""
    try:
        document = orjson.loads(data)
    except orjson.JSONDecodeError:
        return "", None
    if not isinstance(document, dict):
        return "", None
    text = ""
    choices = document.get("choices")
    if isinstance(choices, list) and choices and isinstance(choices[0], dict):
        delta = choices[0].get("delta")
        if isinstance(delta, dict) and isinstance(delta.get("content"), str):
            text = delta["content"]
    return text, document.get("usage")


class Convener:
    """Runs councils for one gateway, on its request path."""

    def __init__(self, path: RequestPath, councils: Councils,
                 memory: ResonanceMemory | None = None) -> None:  # fmt: skip
        self.path = path
        self.councils = councils
        self.memory = memory  # resonance memory (SPEC C8); None: no council remembers

    # -- checks before anything runs ----------------------------------------------------

    def council(self, name: str) -> Council:
        """The council of this name, or a 404 Refusal."""
        council = self.councils.council(name)
        if council is None:
            known = ", ".join(sorted(self.councils.councils)) or "none"
            raise Refusal(404, "COUNCIL_NOT_FOUND", f"no council is named {name!r} "
                          f"(councils: {known})", param="council")  # fmt: skip
        return council

    def check_allowed(self, council: Council, call: Call) -> None:
        """Refuse (403, 404) before any persona runs when the caller may not use one of them."""
        services = self.path.services
        for name in council.roles():
            persona = self.councils.personas[name]
            probe = call._replace(endpoint="chat", document={"model": persona.model,
                                                             "messages": []})  # fmt: skip
            prepare(probe, services.routes, services.adapters, services.codex, services.policy,
                    services.strict)  # fmt: skip

    # -- one persona ----------------------------------------------------------------------

    def _call(self, council: Council, call: Call, persona: Persona, messages: list[Message],
              extra: dict[str, Any] | None = None, stream: bool = False) -> Call:  # fmt: skip
        document = {"model": persona.model, "messages": messages, **persona.sampling()}
        if extra:
            document.update(extra)
        if stream:
            document["stream"] = True
            document["stream_options"] = {"include_usage": True}
        # call.trace, when tracing: the council run's span, which parents the persona's request.
        return Call("chat", document, call.client, f"{call.request_id}.{persona.name}",
                    call.session_id, stream, "pass", call.flat_errors, None, "council",
                    council.name, persona.name, call.trace)  # fmt: skip

    async def ask(self, council: Council, call: Call, persona: Persona,
                  messages: list[Message], extra: dict[str, Any] | None = None,
                  usage: Usage | None = None) -> PersonaAnswer:  # fmt: skip
        """One persona's whole answer (never raises for the persona's own failure)."""
        began = time.perf_counter()
        metrics = self.path.services.metrics

        def answer(content: str | None, prompt: int | None = None, completion: int | None = None,
                   error: str | None = None) -> PersonaAnswer:  # fmt: skip
            seconds = time.perf_counter() - began
            metrics.council_persona_seconds.labels(council.name, persona.name).observe(seconds)
            return PersonaAnswer(persona.name, persona.model, content, round(seconds * 1000, 1),
                                 prompt, completion, error)  # fmt: skip

        try:
            async with asyncio.timeout(council.timeout_s):
                outcome = await self.path.dispatch(self._call(council, call, persona, messages,
                                                              extra))  # fmt: skip
        except TimeoutError:
            return answer(None, error=f"COUNCIL_PERSONA_TIMEOUT: no answer within "
                          f"{council.timeout_s:g} s")  # fmt: skip
        if isinstance(outcome, Rejection):
            refusal = outcome.refusal
            return answer(None, error=f"{refusal.code}: {refusal.message}")
        if isinstance(outcome, Stream):  # not asked for: close it
            await outcome.aclose()
            return answer(None, error="ENGINE_ERROR: a stream came back")
        if outcome.status != 200:
            text = outcome.body[:ERROR_TEXT].decode(errors="replace")
            return answer(None, error=f"ENGINE_ERROR: status {outcome.status}: {text}")
        content, prompt, completion = _answer_text(outcome.body)
        if usage is not None:
            usage.add(prompt, completion)
        if content is None:
            return answer(None, prompt, completion, "ENGINE_ERROR: the answer has no text")
        return answer(content, prompt, completion)

    async def ask_streaming(self, council: Council, call: Call, persona: Persona,
                            messages: list[Message], usage: Usage,
                            ) -> AsyncGenerator[str, None]:  # fmt: skip
        """One persona's answer as its text arrives; Refusal 502 when it fails."""

        def failed(why: str) -> Refusal:
            return Refusal(502, "COUNCIL_AGGREGATOR_FAILED",
                           f"the aggregator {persona.name!r} failed: {why}")  # fmt: skip

        sub = self._call(council, call, persona, messages, stream=True)
        try:
            async with asyncio.timeout(council.timeout_s):
                outcome = await self.path.dispatch(sub)
        except TimeoutError:
            raise failed(f"no answer within {council.timeout_s:g} s") from None
        if isinstance(outcome, Rejection):
            raise failed(f"{outcome.refusal.code}: {outcome.refusal.message}")
        if isinstance(outcome, Answer):
            if outcome.status != 200:
                raise failed(f"status {outcome.status}")
            content, prompt, completion = _answer_text(outcome.body)
            usage.add(prompt, completion)
            if content is None:
                raise failed("the answer has no text")
            yield content
            return
        reader = SSEReader()
        async with outcome:
            async for event in outcome:
                if isinstance(event, Failure):
                    raise failed(f"{event.refusal.code}: {event.refusal.message}")
                if not isinstance(event, Chunk):
                    continue
                for whole in reader.feed(event.data):
                    if whole.data is None or whole.data == b"[DONE]":
                        continue
                    text, used = _delta_text(whole.data)
                    if isinstance(used, dict):
                        usage.add(used.get("prompt_tokens"), used.get("completion_tokens"))
                    if text:
                        yield text

    # -- a run ----------------------------------------------------------------------------

    async def route(self, council: Council, call: Call, conversation: list[Message],
                    usage: Usage) -> tuple[tuple[str, ...], str | None]:  # fmt: skip
        """The personas of the first round, and why it fell back to all (None if it did not)."""
        router = council.router
        if router.kind == "rules":
            chosen = route_by_rules(council, last_user_text(conversation))
            if chosen is None:
                return council.personas, "no rule matched the question"
            return chosen, None
        if router.kind == "model" and router.persona is not None:
            persona = self.councils.personas[router.persona]
            members = self.councils.members(council)
            messages = router_messages(persona, council, members, conversation)
            answer = await self.ask(council, call, persona, messages,
                                    self._forced(persona, "council_router",
                                                 router_schema(council)), usage)  # fmt: skip
            if answer.content is None:
                return council.personas, f"the router failed: {answer.error}"
            return parse_router_choice(council, answer.content)
        return council.personas, None

    def _forced(self, persona: Persona, name: str, schema: dict[str, Any]) -> dict[str, Any]:
        """The request fields that force this persona's engine to answer with the schema."""
        services = self.path.services
        soulstone = services.routes.get(persona.model)
        if soulstone is None and persona.model in services.adapters:
            base = services.adapters[persona.model].base
            soulstone = next((s for s in services.codex.soulstones if s.id == base), None)
        if soulstone is not None and soulstone.engine == "llamacpp":
            return {"json_schema": schema}  # llama-server's own field
        return {"response_format": response_format(name, schema)}

    async def fan_out(self, council: Council, call: Call, routed: Sequence[str],
                      conversation: list[Message], vetoed: tuple[str, str] | None,
                      usage: Usage, memories: Sequence[str] = (),
                      ) -> AsyncGenerator[PersonaAnswer, None]:  # fmt: skip
        """Every routed persona's answer, wave by wave, each as soon as it comes.

        `memories` are the session's recalled memories, given to every member.
        """
        services = self.path.services
        personas = [self.councils.personas[name] for name in routed]
        after = [self.councils.personas[n] for n in (council.aggregator, council.veto) if n]
        waves = plan_waves(personas, services.codex, services.adapters,
                           services.scheduler.running, after)  # fmt: skip
        by_name = {p.name: p for p in personas}
        for wave in waves:
            tasks = [asyncio.create_task(self.ask(
                council, call, by_name[name],
                member_messages(by_name[name], conversation, memories, vetoed), None, usage))
                for name in wave.personas]  # fmt: skip
            try:
                for next_answer in asyncio.as_completed(tasks):
                    yield await next_answer
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)

    async def run(self, council: Council, call: Call) -> AsyncGenerator[CouncilEvent, None]:
        """The run's events in order, ending with Finished; Refusal when it cannot answer.

        `call` is the caller's request (its document holds the messages); with
        `call.stream` the final answer comes as the aggregator writes it.
        """
        metrics = self.path.services.metrics
        outcome = "answered"
        memory = session_memory(self.memory, self.path, council, call)
        try:
            async for event in self._run(council, call, memory):
                yield event
        except Refusal as refusal:
            outcome = refusal.code
            raise
        except asyncio.CancelledError:
            outcome = "cancelled"
            raise
        finally:
            if memory is not None:
                memory.close()
            metrics.council_runs.labels(council.name, outcome).inc()

    async def _run(self, council: Council, call: Call, memory: SessionMemory | None,
                   ) -> AsyncGenerator[CouncilEvent, None]:  # fmt: skip
        began = time.perf_counter()
        conversation = conversation_of(call.document)
        usage = Usage()
        if memory is not None:
            memory.begin(last_user_text(conversation))
        rounds: list[Round] = []
        routed, fallback = await self.route(council, call, conversation, usage)
        vetoed: tuple[str, str] | None = None
        aggregator = self.councils.personas[council.aggregator]
        final = ""
        for number in range(1, council.max_rounds + 1):
            current = Round(number, routed, fallback if number == 1 else None)
            rounds.append(current)
            yield Routed(number, routed, current.fallback)
            memories = await memory.recall() if memory is not None else ()
            async for answer in self.fan_out(council, call, routed, conversation, vetoed, usage,
                                             memories):  # fmt: skip
                current.answers.append(answer)
                yield Answered(number, answer)
            order = {name: index for index, name in enumerate(routed)}
            current.answers.sort(key=lambda a: order[a.persona])
            answered = [(a.persona, a.content) for a in current.answers if a.content is not None]
            quorum = council.quorum_for(len(routed))
            if len(answered) < quorum:
                self.path.services.metrics.council_quorum_failures.labels(council.name).inc()
                raise Refusal(502, "COUNCIL_QUORUM_NOT_MET",
                              f"{len(answered)} of {len(routed)} personas answered; the council "
                              f"{council.name!r} needs {quorum}",
                              answers=[a.document() for a in current.answers])  # fmt: skip
            if memory is not None:
                memory.remember(number, answered)
            messages = aggregator_messages(aggregator, conversation, answered, council.anonymous)
            if council.veto is None:
                pieces = []
                async for text in self.ask_streaming(council, call, aggregator, messages, usage):
                    pieces.append(text)
                    if call.stream:
                        yield FinalText(text)
                final = "".join(pieces)
                break
            draft = await self._draft(council, call, aggregator, messages, usage)
            current.draft = draft
            yield Drafted(number, aggregator.name, draft)
            verdict = await self._judge(council, call, conversation, draft, number, usage)
            current.veto = verdict
            yield Judged(number, verdict)
            final = draft
            if verdict.verdict == "veto":
                self.path.services.metrics.council_vetoes.labels(council.name).inc()
                if number < council.max_rounds:
                    vetoed = (draft, verdict.reason)
                    continue
            if call.stream:
                yield FinalText(final)
            break
        remembered = await memory.finish() if memory is not None else None
        yield Finished({
            "id": f"council-{call.request_id}", "council": council.name,
            "final": {"persona": aggregator.name, "content": final},
            "rounds": [r.document() for r in rounds], "usage": usage.document(),
            "memory": remembered,
            "ms": round((time.perf_counter() - began) * 1000, 1),
        })  # fmt: skip

    async def _draft(self, council: Council, call: Call, aggregator: Persona,
                     messages: list[Message], usage: Usage) -> str:  # fmt: skip
        answer = await self.ask(council, call, aggregator, messages, None, usage)
        if answer.content is None:
            raise Refusal(502, "COUNCIL_AGGREGATOR_FAILED",
                          f"the aggregator {aggregator.name!r} failed: {answer.error}")  # fmt: skip
        return answer.content

    async def _judge(self, council: Council, call: Call, conversation: list[Message], draft: str,
                     number: int, usage: Usage) -> Verdict:  # fmt: skip
        """The veto persona's verdict; one that fails or says nothing lets the draft pass."""
        assert council.veto is not None
        persona = self.councils.personas[council.veto]
        answer = await self.ask(council, call, persona,
                                veto_messages(persona, conversation, draft, number),
                                self._forced(persona, "council_verdict", veto_schema()),
                                usage)  # fmt: skip
        if answer.content is None:
            return Verdict("accept", f"no verdict (the veto persona failed: {answer.error})")
        verdict = parse_verdict(answer.content)
        if verdict is None:
            return Verdict("accept", "no verdict (the veto persona's answer was not one)")
        return verdict
