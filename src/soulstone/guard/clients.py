"""`clients.yaml`: who may call the gateway, with which models and limits (parsing is pure)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from soulstone.errors import SoulstoneError

PositiveInt = Annotated[int, Field(ge=1)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LimitsDecl(_Strict):
    """Limits for a client or a soulstone (each optional)."""

    requests_per_minute: PositiveInt | None = None
    tokens_per_minute: PositiveInt | None = None
    concurrent: PositiveInt | None = None
    max_context_tokens: PositiveInt | None = None
    max_output_tokens: PositiveInt | None = None


class KeyDecl(_Strict):
    """A stored API key: its id, its hash (keys.hash_key), whether it was revoked, where usable."""

    id: str
    hash: str
    revoked: bool = False
    transports: list[Literal["unix", "tcp"]] | None = None


class ClientDecl(_Strict):
    """One client: how it is recognised, what it may use, how much."""

    users: list[str | int] = []
    groups: list[str | int] = []
    keys: list[KeyDecl] = []
    models: list[str] | None = None
    admin: bool = False
    limits: LimitsDecl = LimitsDecl()
    log_content: bool = False
    capture: bool = False  # keep its chats for `lora train --data capture:NAME` (SPEC C7)
    errors: Literal["openai", "flat"] = "openai"  # the error body shape (SPEC C4a)
    unknown_tools: Literal["pass", "refuse"] | None = None  # None: the tools policy decides


class GatewayDecl(_Strict):
    """Gateway-wide limits."""

    max_parallel: PositiveInt = 16
    queue: Annotated[int, Field(ge=0)] = 64
    timeout_s: Annotated[float, Field(gt=0)] = 45.0
    max_context_tokens: PositiveInt = 8192
    max_output_tokens: PositiveInt = 2048


class ClientsDecl(_Strict):
    """The whole file."""

    version: Literal[1] = 1
    gateway: GatewayDecl = GatewayDecl()
    soulstones: dict[str, LimitsDecl] = {}
    clients: dict[str, ClientDecl] = {}


class ClientsFileError(SoulstoneError):
    """clients.yaml is unreadable, too open, or malformed."""


@dataclass(frozen=True)
class Client:
    """A caller the gateway recognised."""

    name: str
    models: frozenset[str] | None
    admin: bool
    limits: LimitsDecl
    log_content: bool = False
    flat_errors: bool = False
    unknown_tools: Literal["pass", "refuse"] | None = None
    capture: bool = False  # its chat exchanges go to its capture file (opted in)

    def may_use(self, model: str) -> bool:
        """True when the client may ask for this model."""
        return self.models is None or model in self.models


OWNER = Client("owner", None, True, LimitsDecl())


def parse_clients(document: Any, where: str) -> ClientsDecl:
    """Validate a loaded YAML document; ClientsFileError naming each bad field."""
    if document is None:
        document = {}
    try:
        return ClientsDecl.model_validate(document)
    except ValidationError as error:
        lines = [
            f"{where}: {'.'.join(str(p) for p in e['loc']) or '(top)'}: {e['msg']}"
            for e in error.errors()
        ]
        raise ClientsFileError("\n".join(lines)) from None


def client_of(name: str, declaration: ClientDecl) -> Client:
    """The resolved client for one declaration."""
    models = frozenset(declaration.models) if declaration.models is not None else None
    return Client(name, models, declaration.admin, declaration.limits, declaration.log_content,
                  declaration.errors == "flat", declaration.unknown_tools,
                  declaration.capture)  # fmt: skip
