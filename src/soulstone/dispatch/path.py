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
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import orjson

from soulstone.dispatch.admission import admit, admit_now
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
from soulstone.dispatch.fit import fit_budget
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
from soulstone.guard.budget import Budget
from soulstone.guard.clients import Client
from soulstone.guard.limits import Spend
from soulstone.observe.trace import TRACEPARENT, Notes, Tracer, parse_traceparent
from soulstone.runtimes.oom import says_out_of_memory
from soulstone.supervisor.restarts import OutOfMemory
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
        if not admit_now(services, prepared, lease):
            prepared = await admit(services, call, prepared, lease, record.trace)
            if prepared.soulstone is not requested:  # a fallback takes it: its budget
                budget = services.guard.budget(prepared.soulstone, call.client.limits)
        body = await fit_budget(services, call, prepared, budget, spend, record)
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

        push = None
        if transform is None and record.capture is None:  # chunks pass unchanged: pushed

            def push(write: Callable[[bytes], None]) -> Awaitable[Refusal | None]:
                return upstream.push(lambda: services.engine_failed(prepared.soulstone), write)

        return Stream(events, close, upstream.content_type, call.flat_errors, upstream.progress,
                      served_by, push)  # fmt: skip

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
