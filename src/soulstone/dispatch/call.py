"""One request free of any transport: the frozen Call, the Entry it comes from, outcomes."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

from soulstone.errors import Refusal
from soulstone.guard.clients import Client
from soulstone.guard.identity import Peer
from soulstone.observe.trace import SpanRef

Endpoint = Literal["chat", "completions", "embeddings", "council"]
ENDPOINT_PATHS: dict[Endpoint, str] = {
    "chat": "/v1/chat/completions",
    "completions": "/v1/completions",
    "embeddings": "/v1/embeddings",
}
ENDPOINTS: dict[str, Endpoint] = {path: name for name, path in ENDPOINT_PATHS.items()}
COUNCIL_MODEL_PREFIX = "council/"  # `council/NAME` on /v1/chat/completions asks a council

REQUEST_ID = "X-Request-ID"
SESSION_ID = "X-Conveyance-Session-ID"
ERRORS_HEADER = "X-Soulstone-Errors"
TOOL_VALIDATION_HEADER = "X-Soulstone-Tool-Validation"
SERVED_BY_HEADER = "X-Soulstone-Served-By"  # a fallback soulstone answered (its id)


class Call(NamedTuple):
    """One request to an engine, identified and parsed: what every guard rail decides on.

    Immutable (a named tuple: frozen, and cheap to build on the hot path).
    `body` is the request's bytes as received (forwarded unchanged unless a
    field must change), or None when the caller built `document` itself (a
    council persona).
    """

    endpoint: Endpoint
    document: dict[str, Any]
    client: Client
    request_id: str
    session_id: str | None = None
    stream: bool = False
    tool_validation: Literal["refuse", "pass"] = "refuse"
    flat_errors: bool = False
    body: bytes | None = None
    way: str = "http"
    council: str | None = None  # a council persona's call: the council's name
    persona: str | None = None  # and the persona's
    trace: SpanRef | None = None  # traced: the span this call's request span hangs under


class Entry(NamedTuple):
    """A request as a transport hands it over, before identity and body are known.

    `read_body` is called only after the caller was identified and its limits
    checked; it raises Refusal for a body too large or malformed. `client` is
    set when the transport identified the caller already (a WebSocket).
    """

    endpoint: Endpoint
    headers: Mapping[str, str]
    peer: Peer | None
    read_body: Callable[[], Awaitable[bytes]]
    request_id: str
    session_id: str | None = None
    way: str = "http"
    client: Client | None = None
    force_stream: bool = False
    council: str | None = None  # POST /v1/council/{name}: the council's name


@dataclass(frozen=True, slots=True)
class Answer:
    """A whole answer from the engine (any status it gave), forwarded as bytes.

    `served_by`: the fallback soulstone that answered instead of the requested one.
    """

    status: int
    body: bytes
    content_type: str = "application/json"
    served_by: str | None = None


@dataclass(frozen=True, slots=True)
class Rejection:
    """A refused request and how this caller wants errors shaped."""

    refusal: Refusal
    flat: bool = False


def wants_flat_errors(headers: Mapping[str, str], client: Client | None) -> bool:
    """True when the caller asked for the flat error shape (header or clients.yaml)."""
    asked = headers.get(ERRORS_HEADER)
    if asked:
        return asked.strip().lower() == "flat"
    return client is not None and client.flat_errors
