"""The one request path: identify, prepare, admit (a lease), forward, check, settle.

Every way in hands over an Entry (or, for a council persona, a Call) and gets
an outcome back: an Answer, a Stream of events, or a Rejection. Whatever
happens, what was acquired is released in reverse order, once, and the
request is settled once: limits charged with what the engine reported,
metrics counted, one request-log line written.
"""

from __future__ import annotations

import asyncio
import time
import traceback
from typing import Any, Protocol

import orjson

from soulstone.codex.models import Soulstone
from soulstone.dispatch.body import parse_document, parse_small
from soulstone.dispatch.call import (
    COUNCIL_MODEL_PREFIX,
    ENDPOINT_PATHS,
    TOOL_VALIDATION_HEADER,
    Answer,
    Call,
    Entry,
    Rejection,
    wants_flat_errors,
)
from soulstone.dispatch.capture import Captured
from soulstone.dispatch.fallback import fallback_for, overwhelmed
from soulstone.dispatch.forward import (
    TAIL_BYTES,
    EngineGone,
    Upstream,
    request_head,
    send,
    usage_in,
)
from soulstone.dispatch.lease import Lease, Record
from soulstone.dispatch.prepare import Prepared, prepare
from soulstone.dispatch.refusals import error_bytes
from soulstone.dispatch.services import Services
from soulstone.dispatch.stream import Stream
from soulstone.errors import Refusal
from soulstone.guard.budget import BOUNDED_FIELDS, Budget, bound_output, fit
from soulstone.guard.clients import Client
from soulstone.guard.limits import Spend
from soulstone.lora.registry import AdapterRecord
from soulstone.observe.trace import TRACEPARENT, Notes, Tracer, parse_traceparent
from soulstone.runtimes.oom import says_out_of_memory
from soulstone.supervisor.restarts import EngineFailed, OutOfMemory
from soulstone.tools.calls import asks_heartbeat, checked_answer
from soulstone.tools.heartbeat import HeartbeatRefused
from soulstone.tools.stream import ToolStream

CLIENT_GONE = 499  # the status logged for a request whose caller went away


Outcome = Answer | Stream | Rejection


class Councils(Protocol):
    """Where the request path sends a council's calls (the council layer sits above it)."""

    def names(self, client: Client | None = None) -> list[str]:
        """The model names (`council/NAME`) of every council, or of those a client may ask."""

    async def answer(self, call: Call) -> Outcome:
        """Run the council the call asks for."""


def _asks_council(call: Call) -> bool:
    """A call for the council API, or a chat completion whose model is `council/NAME`."""
    if call.endpoint == "council":
        return True
    model = call.document.get("model")
    return call.endpoint == "chat" and isinstance(model, str) and model.startswith(
        COUNCIL_MODEL_PREFIX)  # fmt: skip


def _opted_in_content(client: Client, document: dict[str, Any]) -> Any:
    """The request's text, only for a client that opted in to content logging."""
    if not client.log_content:
        return None
    return document.get("messages") or document.get("prompt") or document.get("input")


def _body(call: Call, document: dict[str, Any], changed: bool) -> bytes:
    """The request's bytes as they came, unless the document had to change."""
    if call.body is not None and not changed:
        return call.body
    return orjson.dumps(document)


def _served_model(document: dict[str, Any], services: Services) -> str | None:
    """The requested model when this gateway serves it (a name safe to log), else None."""
    model = document.get("model")
    if isinstance(model, str) and (model in services.routes or model in services.adapters):
        return model
    return None


class RequestPath:
    """The request path of one gateway, shared by every way in."""

    def __init__(self, services: Services, log: Any, tracer: Tracer | None = None) -> None:
        self.services = services
        self.log = log
        self.councils: Councils | None = None  # set by the gateway when it serves councils
        self.tracer = tracer  # None: tracing is off, and no request holds trace notes

    # -- ways in ------------------------------------------------------------------------

    async def enter(self, entry: Entry) -> Outcome:
        """Identify the caller, check its limits, read and parse the body, then dispatch."""
        services = self.services
        record = Record(entry.request_id, entry.session_id, entry.way)
        if self.tracer is not None:  # trace: continue the caller's trace, if it sent one
            record.trace = Notes(parse_traceparent(entry.headers.get(TRACEPARENT)))
        client = entry.client
        try:
            if client is None:
                client = await services.guard.identities.identify(entry.headers, entry.peer)
            record.client = client
            services.guard.limiter.check(client)  # cheap refusals before the body is read
            body = await entry.read_body()
            document = parse_small(body)  # at once, or (a large body) off the loop
            if document is None:
                document = await parse_document(body, services.big_parses)
        except Refusal as refusal:
            return self._refuse(record, refusal, wants_flat_errors(entry.headers, client))
        except Exception as error:
            flat = wants_flat_errors(entry.headers, client)
            return self._refuse(record, self._internal(error), flat)
        validation = entry.headers.get(TOOL_VALIDATION_HEADER, "").lower()
        call = Call(
            entry.endpoint, document, client, entry.request_id, entry.session_id,
            entry.force_stream or document.get("stream") is True,
            "pass" if validation == "pass" else "refuse",
            wants_flat_errors(entry.headers, client), body, entry.way, entry.council,
        )  # fmt: skip
        if _asks_council(call):
            return await self._council(call, record)
        return await self._run(call, record)

    def refuse(self, request_id: str, session_id: str | None, way: str, refusal: Refusal,
               flat: bool) -> Rejection:  # fmt: skip
        """Settle a request a transport refused before it could enter (counted and logged)."""
        record = Record(request_id, session_id, way)
        if self.tracer is not None:  # trace
            record.trace = Notes(None)
        return self._refuse(record, refusal, flat)

    async def dispatch(self, call: Call) -> Outcome:
        """Serve a call whose caller is already identified (a council persona)."""
        record = Record(call.request_id, call.session_id, call.way)
        record.council, record.persona = call.council, call.persona
        if self.tracer is not None:  # trace: under the council's span
            record.trace = Notes(call.trace)
        return await self._run(call, record)

    # -- a council ----------------------------------------------------------------------

    async def _council(self, call: Call, record: Record) -> Outcome:
        """Hand a council call to the council layer; settle the caller's request once."""
        record.client = call.client
        councils = self.councils
        limiter = self.services.guard.limiter
        spend: Spend | None = None
        try:
            if councils is None:
                raise Refusal(404, "COUNCIL_NOT_FOUND", "this gateway serves no councils",
                              param="model")  # fmt: skip
            name = call.council
            if name is None:
                name = call.document["model"][len(COUNCIL_MODEL_PREFIX) :]
            if f"{COUNCIL_MODEL_PREFIX}{name}" in councils.names():
                record.model = f"{COUNCIL_MODEL_PREFIX}{name}"
                record.council = name
            # The council is one request in flight; its personas' calls count their tokens.
            spend = limiter.admit(call.client)
            if record.trace is not None:  # trace: the run's span parents its personas' requests
                run = record.trace.open("soulstone.council", council=name)
                call = call._replace(trace=record.trace.child(run))
            outcome = await councils.answer(call)
        except Refusal as refusal:
            self._end_council(call, spend)
            return self._refuse(record, refusal, call.flat_errors)
        except asyncio.CancelledError:
            self._end_council(call, spend)
            self._settle(record, CLIENT_GONE)
            raise
        except Exception as error:
            self._end_council(call, spend)
            return self._refuse(record, self._internal(error), call.flat_errors)
        if isinstance(outcome, Stream):
            ended = spend

            def close() -> None:
                self._end_council(call, ended)
                self._settle(record, 200)

            outcome.on_close(close)
        else:
            self._end_council(call, spend)
            self._settle(record, outcome.status if isinstance(outcome, Answer)
                         else outcome.refusal.status)  # fmt: skip
        return outcome

    def _end_council(self, call: Call, spend: Spend | None) -> None:
        """The council's request ends: it leaves the caller's in-flight count."""
        if spend is not None:
            self.services.guard.limiter.settle(call.client, spend, None)

    # -- the path -----------------------------------------------------------------------

    async def _run(self, call: Call, record: Record) -> Outcome:
        services = self.services
        record.client = call.client
        lease = Lease()
        try:
            prepared = prepare(call, services.routes, services.adapters, services.codex,
                               services.policy, services.strict)  # fmt: skip
            record.model = prepared.model
            if call.client.log_content:
                record.content = _opted_in_content(call.client, call.document)
            if call.client.capture and call.endpoint == "chat" and services.capture is not None:
                record.capture = Captured(call.document.get("messages"), prepared.model)
            if call.session_id and call.council is None:  # not a council persona's call
                self._heartbeat(call, record)
            budget = services.guard.budget(prepared.soulstone, call.client.limits)
            spend = self._reserve(call, prepared, budget, record, lease)
            requested, held = prepared.soulstone, len(lease)
            try:
                prepared, result = await self._forward(call, prepared, budget, spend, record,
                                                       lease)  # fmt: skip
            except EngineGone:  # nobody listened: it died; wait for its restart, as anew
                lease.release_to(held)
                prepared, result = await self._forward(call, prepared, budget, spend, record,
                                                       lease)  # fmt: skip
            soulstone = prepared.soulstone
            served_by = None if soulstone is requested else soulstone.id
            if isinstance(result, Upstream):
                return self._stream(call, prepared, result, record, lease, served_by)
            if record.trace is not None:
                record.trace.answered(result.status)
            if result.status >= 500 and says_out_of_memory(result.body):
                raise OutOfMemory(soulstone.id, "answering this request")
            services.scheduler.recovery.answered(soulstone.id)
            record.reported(usage_in(result.body[-TAIL_BYTES:]))
            if record.capture is not None:
                record.capture.body = result.body
            if result.status == 200 and prepared.tools:
                result = self._checked_answer(call, prepared, result, record)
            if served_by is not None:
                result = Answer(result.status, result.body, result.content_type, served_by)
        except Refusal as refusal:
            self._release(lease, record)
            if record.model is None:  # refused while preparing: name a model it serves
                record.model = _served_model(call.document, services)
            return self._refuse(record, refusal, call.flat_errors)
        except asyncio.CancelledError:
            self._release(lease, record)
            self._settle(record, CLIENT_GONE)
            raise
        except Exception as error:
            self._release(lease, record)
            return self._refuse(record, self._internal(error), call.flat_errors)
        if record.heartbeat is not None:
            self._answered(record, result.status, self._asks_heartbeat(result, prepared))
        self._release(lease, record)
        self._settle(record, result.status)
        return result

    async def _forward(
        self, call: Call, prepared: Prepared, budget: Budget, spend: Spend, record: Record,
        lease: Lease,
    ) -> tuple[Prepared, Answer | Upstream]:  # fmt: skip
        """Admit the call (to its engine, or its fallback's), fit its budget, send it.

        Returns the call as prepared for the soulstone that took it, and its answer.
        """
        services = self.services
        requested = prepared.soulstone
        if not self._admit_now(prepared, lease):
            prepared = await self._admit(call, prepared, lease, record.trace)
            if prepared.soulstone is not requested:  # a fallback takes it: its budget
                budget = services.guard.budget(prepared.soulstone, call.client.limits)
        body = await self._fit_budget(call, prepared, budget, spend, record)
        soulstone = prepared.soulstone
        record.forwarded = True
        upstreams = services.upstreams
        path = ENDPOINT_PATHS[call.endpoint]
        prefix = upstreams.request_head(soulstone, path)
        trace = record.trace
        head = request_head(prefix, call.request_id, len(body), b"" if trace is None else
                            trace.upstream_header(soulstone.id, path, call.stream))  # fmt: skip
        result = await send(
            upstreams.pool(soulstone), head, body, call.stream,
            services.guard.gateway.timeout_s, lambda: services.engine_failed(soulstone),
        )  # fmt: skip
        return prepared, result

    def _heartbeat(self, call: Call, record: Record) -> None:
        """Count a heartbeat request of the session's chain (keyed by client and session)."""
        services = self.services
        key = f"{call.client.name}\0{call.session_id}"
        limits = services.policy.clients.get(call.client.name, services.policy.heartbeat)
        try:
            services.heartbeats.admit(key, limits)
        except HeartbeatRefused as refusal:
            services.metrics.heartbeat_refusals.labels(refusal.code).inc()
            raise
        record.heartbeat = key

    def _reserve(self, call: Call, prepared: Prepared, budget: Budget, record: Record,
                 lease: Lease) -> Spend:  # fmt: skip
        """Count the request against its client's limits, reserving its worst-case tokens."""
        guard = self.services.guard
        client = call.client
        reserve = 0
        if client.limits.tokens_per_minute is not None:
            output = prepared.output
            per_answer = output.max_tokens or budget.max_output_tokens // output.sequences
            size = len(call.body) if call.body is not None else len(orjson.dumps(call.document))
            reserve = size // 4 + per_answer * output.sequences  # settled to the real usage
        # A council's persona call is counted in flight by its council's request.
        spend = guard.limiter.admit(client, reserve, in_flight=call.council is None)
        lease.hold(lambda: guard.limiter.settle(client, spend, record.used_tokens()))
        return spend

    def _admit_now(self, prepared: Prepared, lease: Lease) -> bool:
        """Take a free slot and the running engine without waiting (no adapter asked for).

        False, holding nothing, when anything must wait: then `_admit` does it all.
        """
        if prepared.adapter is not None:
            return False
        slots, scheduler = self.services.guard.slots, self.services.scheduler
        soulstone = prepared.soulstone
        if not slots.try_acquire():
            return False
        if not scheduler.admit_now(soulstone):
            slots.release()
            return False
        lease.hold(slots.release)
        lease.hold(lambda: scheduler.release(soulstone))
        return True

    async def _admit(self, call: Call, prepared: Prepared, lease: Lease,
                     trace: Notes | None) -> Prepared:  # fmt: skip
        """Take a global slot, the engine (manifested, swapped in) and the adapter (hot).

        Returns the call as prepared for the soulstone that takes it: the
        requested one, or its fallback while that one is failed or full.
        Traced: a phase for each wait there was (slot, engine, adapter load).
        """
        services = self.services
        slots, scheduler = services.guard.slots, services.scheduler
        if not slots.try_acquire():
            began = time.perf_counter()
            await slots.acquire()
            if trace is not None:
                trace.add("soulstone.queue", began, wait="slot")
        lease.hold(slots.release)
        if not scheduler.admit_now(prepared.soulstone):
            if prepared.soulstone.fallback is not None and overwhelmed(prepared, services):
                prepared = fallback_for(call, prepared, services) or prepared
            prepared = await self._engine(call, prepared, trace)
        soulstone = prepared.soulstone
        lease.hold(lambda: scheduler.release(soulstone))
        adapter = prepared.adapter
        if adapter is not None:
            if services.hot is None:
                raise Refusal(409, "NO_ADAPTERS", "this gateway runs without adapters")
            hot = services.hot
            loads = trace is not None and adapter.name not in hot.hot(soulstone.id)
            began = time.perf_counter()
            await hot.acquire(soulstone, adapter)
            if loads and trace is not None:
                trace.add("soulstone.adapter_load", began, adapter=adapter.name,
                          soulstone=soulstone.id)  # fmt: skip
            lease.hold(lambda: hot.release(soulstone, adapter.name))
            if call.session_id and call.council is None:
                self._prefetch_next(soulstone, call.session_id, adapter)
        return prepared

    async def _engine(self, call: Call, prepared: Prepared, trace: Notes | None) -> Prepared:
        """Wait for the engine (started or swapped in); a failed one's fallback takes the call."""
        scheduler = self.services.scheduler
        soulstone = prepared.soulstone
        began, swaps = time.perf_counter(), scheduler.swaps
        running = soulstone.id in scheduler.running  # running: queued behind a swap
        try:
            try:
                await scheduler.acquire(soulstone)
            except EngineFailed:
                fallback = fallback_for(call, prepared, self.services)
                if fallback is None:
                    raise
                prepared, soulstone = fallback, fallback.soulstone
                await scheduler.acquire(soulstone)
        finally:
            if trace is not None:
                trace.add("soulstone.queue" if running else "soulstone.engine_start", began,
                          soulstone=soulstone.id, wait="engine",
                          swapped=scheduler.swaps != swaps)  # fmt: skip
        return prepared

    def _prefetch_next(self, soulstone: Soulstone, session: str, adapter: AdapterRecord) -> None:
        """Count the session's transition; warm (or load) the adapter likely to come next."""
        services = self.services
        hit, following = services.transitions.observe(session, adapter.name)
        services.metrics.prefetch.labels("hit" if hit else "miss").inc()
        record = services.adapters.get(following) if following else None
        if record is None or services.hot is None or record.base != soulstone.id:
            return
        task = asyncio.create_task(services.hot.prefetch(soulstone, record))
        services.background.add(task)
        task.add_done_callback(services.background.discard)
        task.add_done_callback(lambda t: t.cancelled() or t.exception())

    async def _fit_budget(
        self, call: Call, prepared: Prepared, budget: Budget, spend: Spend, record: Record
    ) -> bytes:
        """Count the prompt, fit the output into the budget; the body to send."""
        document, changed = prepared.document, prepared.changed
        if call.endpoint == "embeddings":
            return _body(call, document, changed)
        only_adds = not changed and call.body is not None and document.keys().isdisjoint(
            BOUNDED_FIELDS)  # fmt: skip
        guard, soulstone = self.services.guard, prepared.soulstone
        counted = document
        if prepared.adapter is not None:  # an adapter: its base model's tokenizer
            counted = {**document, "model": soulstone.models[0]}
        if record.trace is None:
            prompt_tokens = await guard.counter.count(soulstone, counted)
        else:  # trace: a phase when the count asked the engine (a cached count does not wait)
            asked, began = guard.counter.asked, time.perf_counter()
            prompt_tokens = await guard.counter.count(soulstone, counted)
            if guard.counter.asked != asked:
                record.trace.add("soulstone.token_count", began, soulstone=soulstone.id,
                                 prompt_tokens=-1 if prompt_tokens is None else prompt_tokens,
                                 )  # fmt: skip
        record.prompt_tokens = prompt_tokens
        max_tokens = fit(prompt_tokens, prepared.output, budget)
        sequences = prepared.output.sequences
        if call.client.limits.tokens_per_minute is not None:
            guard.limiter.adjust(call.client, spend, (prompt_tokens or 0) + max_tokens * sequences)
        if only_adds and call.body is not None:
            # No length field at all: write `max_tokens` into the body as it came.
            end = call.body.rindex(b"}")
            return call.body[:end] + b',"max_tokens":' + str(max_tokens).encode() + call.body[end:]
        bounded = dict(document)
        if not bound_output(bounded, max_tokens):
            return _body(call, document, changed)
        return orjson.dumps(bounded)

    def _checked_answer(self, call: Call, prepared: Prepared, answer: Answer,
                        record: Record) -> Answer:  # fmt: skip
        """Hermes text parsed into tool calls, every call validated (else ToolCallInvalid)."""
        passthrough = call.tool_validation == "pass"
        began = time.perf_counter() if record.trace is not None else 0.0
        try:
            checked = checked_answer(answer.body, self.services.validators, prepared.hermes,
                                     passthrough, prepared.unknown_tools)  # fmt: skip
        except Refusal as refusal:
            if record.trace is not None:
                record.trace.add("soulstone.tool_check", began, error_code=refusal.code)
            raise
        if record.trace is not None:
            record.trace.add("soulstone.tool_check", began)
        return answer if checked is answer.body else Answer(200, checked, answer.content_type)

    def _asks_heartbeat(self, answer: Answer, prepared: Prepared) -> bool:
        return answer.status == 200 and prepared.tools and asks_heartbeat(answer.body)

    def _stream(self, call: Call, prepared: Prepared, upstream: Upstream, record: Record,
                lease: Lease, served_by: str | None) -> Stream:  # fmt: skip
        """The engine's stream as events; closing it settles the request."""
        services = self.services
        transform = None
        if prepared.tools:
            flat = call.flat_errors

            def render(refusal: Refusal) -> bytes:  # an invalid call: counted like any refusal
                record.code = refusal.code
                services.metrics.refused(refusal.code)
                return error_bytes(refusal, flat)

            transform = ToolStream(services.validators, hermes=prepared.hermes,
                                   unknown=prepared.unknown_tools, render_error=render)  # fmt: skip

        events = upstream.events(lambda: services.engine_failed(prepared.soulstone), transform)
        if record.capture is not None:
            events = record.capture.tap(events)
        closed = False

        def close() -> None:
            nonlocal closed
            if closed:
                return
            closed = True
            upstream.abort()  # nothing when the events ran to the end (released already)
            record.events = upstream.events_seen
            record.reported(upstream.usage)
            record.first_at = upstream.first_at
            if upstream.failure is not None:
                record.code = upstream.failure.code
                services.metrics.refused(upstream.failure.code)
            elif upstream.whole:
                services.scheduler.recovery.answered(prepared.soulstone.id)
            if record.trace is not None:  # trace: the engine's phase ends; tool calls checked
                failure = upstream.failure.code if upstream.failure is not None else None
                record.trace.streamed(upstream.first_at, upstream.events_seen, failure,
                                      None if transform is None else transform.sent_calls,
                                      record.code)  # fmt: skip
            self._answered(record, 200, heartbeat=transform is not None and transform.heartbeat)
            self._release(lease, record)
            self._settle(record, 200)

        return Stream(events, close, upstream.content_type, call.flat_errors, upstream.progress,
                      served_by)  # fmt: skip

    # -- the end ------------------------------------------------------------------------

    def _answered(self, record: Record, status: int, heartbeat: bool) -> None:
        """The answer went out: it continues (or opens) the session's chain, or ends it."""
        if record.heartbeat is not None and status == 200:
            self.services.heartbeats.answered(record.heartbeat, heartbeat)

    def _release(self, lease: Lease, record: Record) -> None:
        try:
            lease.release()
        except Exception as error:
            self.log.error("releasing a request's lease failed", request_id=record.request_id,
                           error=type(error).__name__)  # fmt: skip

    def _internal(self, error: Exception) -> Refusal:
        """An unexpected error: logged by type and place only (never the request's bytes)."""
        frames = traceback.extract_tb(error.__traceback__)
        where = f"{frames[-1].filename}:{frames[-1].lineno}" if frames else "?"
        self.log.error("request failed", error=type(error).__name__, where=where)
        return Refusal(500, "INTERNAL_ERROR", f"the gateway failed on this request "
                       f"({type(error).__name__}); see its log")  # fmt: skip

    def _refuse(self, record: Record, refusal: Refusal, flat: bool) -> Rejection:
        record.code = refusal.code
        self.services.metrics.refused(refusal.code)
        self._settle(record, refusal.status)
        return Rejection(refusal, flat)

    def _settle(self, record: Record, status: int) -> None:
        """Count the request in metrics and write its request-log line (once)."""
        if record.settled:
            return
        record.settled = True
        services = self.services
        seconds = time.perf_counter() - record.began
        model = record.model
        client = record.client.name if record.client is not None else None
        metrics = services.metrics
        client_name = client or "-"
        metrics.request_done(model or "-", status, client_name, seconds if model else None,
                             record.request_id)  # fmt: skip
        if record.forwarded and model:
            prompt = record.reported_prompt or record.prompt_tokens
            metrics.tokens(model, client_name, prompt, record.completion_tokens)
            if record.first_at is not None:
                metrics.first_token(model, record.first_at - record.began)
        services.requests_log.write(
            request_id=record.request_id, session_id=record.session_id,
            client=client, model=model, status=status,
            code=record.code, way=record.way, council=record.council, persona=record.persona,
            prompt_tokens=record.prompt_tokens, completion_tokens=record.completion_tokens,
            total_tokens=record.total_tokens, ms=round(seconds * 1000, 2),
            ttft_ms=None if record.first_at is None else round(
                (record.first_at - record.began) * 1000, 2),
            content=record.content,
        )  # fmt: skip
        if record.capture is not None and status == 200 and record.code is None:  # whole answers
            record.capture.settle(services.capture, client)
        services.live.request(record.request_id, model, client, status,
                              record.code, seconds, record.way, record.council,
                              record.persona)  # fmt: skip
        if record.trace is not None and self.tracer is not None:  # trace: the spans go out
            self.tracer.finish(record.trace, record.span_attributes(status), status)
