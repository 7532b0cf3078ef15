"""The token budget on the request path: count the prompt, bound the output, the body to send.

The body goes on as it came whenever nothing in it had to change; a request
with no length field at all gets `max_tokens` written into its bytes.
"""

from __future__ import annotations

import time
from typing import Any

import orjson

from soulstone.dispatch.call import Call
from soulstone.dispatch.lease import Record
from soulstone.dispatch.prepare import Prepared
from soulstone.dispatch.services import Services
from soulstone.guard.budget import BOUNDED_FIELDS, Budget, bound_output, fit
from soulstone.guard.limits import Spend


def request_body(call: Call, document: dict[str, Any], changed: bool) -> bytes:
    """The request's bytes as they came, unless the document had to change."""
    if call.body is not None and not changed:
        return call.body
    return orjson.dumps(document)


async def fit_budget(
    services: Services, call: Call, prepared: Prepared, budget: Budget, spend: Spend,
    record: Record,
) -> bytes:  # fmt: skip
    """Count the prompt, fit the output into the budget; the body to send."""
    document, changed = prepared.document, prepared.changed
    if call.endpoint == "embeddings":
        return request_body(call, document, changed)
    only_adds = not changed and call.body is not None and document.keys().isdisjoint(
        BOUNDED_FIELDS)  # fmt: skip
    guard, soulstone = services.guard, prepared.soulstone
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
        return request_body(call, document, changed)
    return orjson.dumps(bounded)
