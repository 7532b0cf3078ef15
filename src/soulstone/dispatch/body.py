"""Request bodies to documents, bounded: small ones parsed at once, large ones off the loop."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson

from soulstone.errors import Refusal

MAX_CONTAINERS = 200_000  # JSON objects and arrays in one body: each costs ~100 bytes parsed
THREAD_PARSE_BYTES = 256 * 1024  # larger bodies are parsed in a worker thread


MAX_DEPTH = 255  # orjson writes no deeper: a deeper document could never be forwarded


def _parse(body: bytes, containers: int) -> Any:
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError as error:
        raise Refusal(400, "INVALID_JSON", f"the body is not JSON: {error}") from None
    if containers > MAX_DEPTH:  # deep enough to matter: check it can be written again
        try:
            orjson.dumps(document)
        except orjson.JSONEncodeError:
            raise Refusal(400, "INVALID_JSON", f"the body nests deeper than {MAX_DEPTH} "
                          "levels") from None  # fmt: skip
    return document


def _containers(body: bytes) -> int:
    """JSON objects and arrays in a body at most; Refusal 413 when there are too many."""
    containers = body.count(b"{") + body.count(b"[")
    if containers > MAX_CONTAINERS:
        raise Refusal(413, "BODY_TOO_COMPLEX", f"the body holds more than {MAX_CONTAINERS} "
                      "JSON objects and arrays")  # fmt: skip
    return containers


def _object(document: Any) -> dict[str, Any]:
    if not isinstance(document, dict):
        raise Refusal(400, "INVALID_JSON", "the body must be a JSON object")
    return document


def parse_small(body: bytes) -> dict[str, Any] | None:
    """A small body's document, parsed at once (Refusal when bad); None for a large body."""
    if len(body) >= THREAD_PARSE_BYTES:
        return None
    return _object(_parse(body, _containers(body)))


async def parse_document(body: bytes, big_parses: asyncio.Semaphore) -> dict[str, Any]:
    """The body as a JSON object; Refusal 400/413 when it is not one or holds too much.

    A body with more objects and arrays than MAX_CONTAINERS is refused before
    it is parsed (a few KiB of `[{},{},...]` would otherwise become gigabytes
    of Python objects); a large one is parsed in a thread, a few at a time.
    """
    small = parse_small(body)
    if small is not None:
        return small
    containers = _containers(body)
    async with big_parses:
        return _object(await asyncio.to_thread(_parse, body, containers))
