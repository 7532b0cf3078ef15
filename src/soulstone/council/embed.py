"""Embeddings for resonance memory, asked on the one request path as the council's caller.

The call is an ordinary `/v1/embeddings` request (C4a): the caller's
permissions, limits and budget apply, and its request-log line names the
council. It carries no session id, so it neither counts in nor ends the
session's heartbeat chain (C6).
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Sequence
from typing import Any

import orjson

from soulstone.dispatch.call import Call, Rejection
from soulstone.dispatch.path import RequestPath
from soulstone.dispatch.stream import Stream
from soulstone.errors import SoulstoneError

ERROR_TEXT = 200  # characters of an engine's error kept in the message


class EmbeddingFailed(SoulstoneError):
    """The embedding was refused or its answer was not one (the message says which)."""


def embeddings_call(call: Call, council: str, model: str, texts: Sequence[str], request_id: str,
                    extra: dict[str, Any] | None = None) -> Call:  # fmt: skip
    """The embeddings request for `texts`, made with the caller's identity."""
    document: dict[str, Any] = {"model": model, "input": list(texts), **(extra or {})}
    return Call("embeddings", document, call.client, request_id, None, False, "pass",
                call.flat_errors, None, "council", council, None)  # fmt: skip


def engine_fields(engine: str | None) -> dict[str, Any]:
    """Request fields an engine needs to embed any answer: vLLM truncates to its context."""
    return {"truncate_prompt_tokens": -1} if engine == "vllm" else {}


def parse_embeddings(body: bytes, count: int) -> list[list[float]]:
    """The vectors of an OpenAI embeddings answer, in input order; EmbeddingFailed if not one."""
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise EmbeddingFailed("the embeddings answer is not JSON") from None
    data = document.get("data") if isinstance(document, dict) else None
    if not isinstance(data, list) or len(data) != count:
        got = len(data) if isinstance(data, list) else "no"
        raise EmbeddingFailed(f"the embeddings answer has {got} vectors for {count} inputs")
    by_index: dict[int, list[float]] = {}
    for position, item in enumerate(data):
        index = item.get("index", position) if isinstance(item, dict) else None
        vector = item.get("embedding") if isinstance(item, dict) else None
        if not isinstance(index, int) or not 0 <= index < count or index in by_index:
            raise EmbeddingFailed(f"data[{position}] has no valid `index`")
        if not isinstance(vector, list) or not vector or not all(
            isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)
            for x in vector
        ):  # fmt: skip
            raise EmbeddingFailed(f"data[{position}].embedding is not a list of numbers")
        by_index[index] = [float(x) for x in vector]
    vectors = [by_index[i] for i in range(count)]
    if len({len(v) for v in vectors}) > 1:
        raise EmbeddingFailed("the embeddings answer mixes vector dimensions")
    return vectors


async def embed(path: RequestPath, call: Call, council: str, model: str, texts: Sequence[str],
                request_id: str, timeout_s: float) -> list[list[float]]:  # fmt: skip
    """Embed texts through the request path; EmbeddingFailed when refused, failed or late."""
    soulstone = path.services.routes.get(model)
    extra = engine_fields(soulstone.engine if soulstone is not None else None)
    try:
        async with asyncio.timeout(timeout_s):
            outcome = await path.dispatch(embeddings_call(call, council, model, texts,
                                                          request_id, extra))  # fmt: skip
    except TimeoutError:
        raise EmbeddingFailed(f"EMBEDDING_TIMEOUT: no answer within {timeout_s:g} s") from None
    if isinstance(outcome, Rejection):
        raise EmbeddingFailed(f"{outcome.refusal.code}: {outcome.refusal.message}")
    if isinstance(outcome, Stream):  # not asked for: close it
        await outcome.aclose()
        raise EmbeddingFailed("ENGINE_ERROR: a stream came back")
    if outcome.status != 200:
        text = outcome.body[:ERROR_TEXT].decode(errors="replace")
        raise EmbeddingFailed(f"ENGINE_ERROR: status {outcome.status}: {text}")
    try:
        return parse_embeddings(outcome.body, len(texts))
    except EmbeddingFailed as error:
        raise EmbeddingFailed(f"EMBEDDING_INVALID: {error}") from None
