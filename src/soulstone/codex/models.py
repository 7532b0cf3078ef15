"""Typed codex values: raw declarations as written, and resolved soulstones."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Annotated, Literal
from urllib.parse import quote

from pydantic import BaseModel, ConfigDict, Field, field_validator

from soulstone.codex.engines import EngineName
from soulstone.codex.remote import RemoteAddress, parse_remote
from soulstone.errors import Problem

DeclaredRuntime = Literal["quadlet", "podman", "process"]
RuntimeName = Literal["quadlet", "podman", "process", "remote"]  # remote: a remote soulstone
ToolParser = Literal["none", "hermes"]

PositiveSeconds = Annotated[float, Field(gt=0)]
PositiveInt = Annotated[int, Field(ge=1)]
DEFAULT_WARMUP_PROMPT = "Hello"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class HealthDecl(_Strict):
    """The `health` table: readiness probe path and timings in seconds."""

    path: str | None = None
    start_timeout: PositiveSeconds | None = None
    interval: PositiveSeconds | None = None


class LoraDecl(_Strict):
    """The `lora` table: how many adapters an engine may hold, and how large."""

    max_loras: PositiveInt = 1
    max_lora_rank: PositiveInt = 16
    max_cpu_loras: PositiveInt | None = None


class WarmupDecl(_Strict):
    """The `warmup` table: the warm-up request's prompt and its token budget."""

    prompt: str = DEFAULT_WARMUP_PROMPT
    max_tokens: PositiveInt = 1


class SoulstoneDecl(_Strict):
    """One soulstone table exactly as written, type-checked but not yet resolved."""

    description: str = ""
    engine: EngineName | None = None
    image: str | None = None
    exec: list[str] | str | None = None
    port: Annotated[int, Field(ge=1, le=65535)] | None = None
    socket: str | None = None
    port_expose: bool = False
    model: str | None = None
    revision: str | None = None
    model_path: str | None = None
    volumes: list[str] = []
    env: dict[str, str] = {}
    devices: list[str] | None = None
    groups: list[str] = []
    capabilities: list[str] = []
    models: list[str] | Literal["discover"] | None = None
    health: HealthDecl = HealthDecl()
    lora: LoraDecl | None = None
    ttl: PositiveInt | None = None
    runtime: DeclaredRuntime | None = None
    tool_parser: ToolParser = "none"
    fallback: str | None = None
    warmup: WarmupDecl | None = None
    remote: str | None = None
    key_file: str | None = None
    key_env: str | None = None
    tokenizer: str | None = None
    sleep: bool = False

    @field_validator("warmup", mode="before")
    @classmethod
    def _warmup_switch(cls, value: object) -> object:
        """`warmup = true` is the table with its defaults; `false` is no warm-up."""
        if value is True:
            return {}
        return None if value is False else value


FIELD_NAMES: frozenset[str] = frozenset(SoulstoneDecl.model_fields)
TABLE_FIELDS: dict[str, frozenset[str]] = {
    "health": frozenset(HealthDecl.model_fields),
    "lora": frozenset(LoraDecl.model_fields),
    "warmup": frozenset(WarmupDecl.model_fields),
}
SUBTABLE_FIELDS: frozenset[str] = frozenset({*TABLE_FIELDS, "env"})


@dataclass(frozen=True)
class Health:
    """Resolved readiness probe: path, start timeout and poll interval in seconds."""

    path: str
    start_timeout: float
    interval: float


@dataclass(frozen=True)
class Lora:
    """Resolved adapter limits of one engine."""

    max_loras: int
    max_lora_rank: int
    max_cpu_loras: int | None


@dataclass(frozen=True)
class Warmup:
    """Resolved warm-up request, sent once an engine is healthy, before user traffic."""

    prompt: str
    max_tokens: int


@dataclass(frozen=True)
class Soulstone:
    """One validated engine declaration with every default resolved."""

    id: str
    file: str
    groups: tuple[str, ...]
    engine: EngineName
    runtime: RuntimeName
    argv: tuple[str, ...]
    models: tuple[str, ...]
    health: Health
    description: str = ""
    image: str | None = None
    port: int | None = None
    socket: str | None = None
    port_expose: bool = False
    model: str | None = None
    revision: str | None = None
    model_path: str | None = None
    volumes: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    devices: tuple[str, ...] | None = None
    capabilities: tuple[str, ...] = ()
    lora: Lora | None = None
    ttl: int | None = None
    tool_parser: ToolParser = "none"
    runtime_explicit: bool = field(default=False, compare=False)
    warmup: Warmup | None = field(default=None, compare=False)  # no restart when it changes
    fallback: str | None = field(default=None, compare=False)  # no restart when it changes
    remote: str | None = None  # a remote soulstone's address (SPEC C12); never holds a key
    key_file: str | None = None
    key_env: str | None = None
    discover: bool = False  # models = "discover": the remote's own /v1/models list
    # A remote's tokenizer folder: prompts are counted with it here (no restart when it changes).
    tokenizer: str | None = field(default=None, compare=False)
    sleep: bool = False  # vLLM's sleep mode is the swap (its flag: a restart when it changes)

    @cached_property
    def address(self) -> RemoteAddress | None:
        """A remote soulstone's parsed address; None for a local one."""
        if self.remote is None:
            return None
        parsed = parse_remote(self.remote)
        return parsed if isinstance(parsed, RemoteAddress) else None

    @property
    def name(self) -> str:
        """The table's own name: the last part of the id."""
        return self.id.rsplit(".", 1)[-1]

    @property
    def unit(self) -> str:
        """The systemd unit name: `soulstone-` plus the id with dots as dashes."""
        return unit_name(self.id)

    @property
    def uri(self) -> str:
        """The OpenAI base URI the gateway uses to reach this engine."""
        if self.remote is not None:
            return self.remote
        if self.socket is not None:
            return f"http+unix://{quote(self.socket, safe='')}/v1"
        return f"http://localhost:{self.port}/v1"

    def summary(self) -> dict[str, object]:
        """Return the `check --json` record of this soulstone (a remote's adds its address)."""
        record: dict[str, object] = {
            "id": self.id,
            "unit": self.unit,
            "file": self.file,
            "groups": list(self.groups),
            "engine": self.engine,
            "runtime": self.runtime,
            "uri": self.uri,
            "port": self.port,
            "socket": self.socket,
            "models": list(self.models),
            "capabilities": list(self.capabilities),
        }
        if self.remote is not None:
            record |= {"remote": self.remote, "discover": self.discover,
                       "tokenizer": self.tokenizer}  # fmt: skip
        return record


def unit_name(soulstone_id: str) -> str:
    """Return the unit name for a soulstone id (`logic.alpha` -> `soulstone-logic-alpha`)."""
    return "soulstone-" + soulstone_id.replace(".", "-")


@dataclass(frozen=True)
class Codex:
    """A validated codex: soulstones sorted by id, conflict pairs and warnings."""

    soulstones: tuple[Soulstone, ...]
    conflicts: tuple[tuple[str, str], ...]
    warnings: tuple[Problem, ...] = ()

    def get(self, soulstone_id: str) -> Soulstone | None:
        """Return the soulstone with this id, or None."""
        for soulstone in self.soulstones:
            if soulstone.id == soulstone_id:
                return soulstone
        return None

    def serving(self, model: str) -> Soulstone | None:
        """Return the soulstone that serves this model name, or None."""
        for soulstone in self.soulstones:
            if model in soulstone.models:
                return soulstone
        return None

    def groups(self) -> dict[str, tuple[str, ...]]:
        """Return each group name with the ids of its members, both sorted."""
        members: dict[str, list[str]] = {}
        for soulstone in self.soulstones:
            for group in soulstone.groups:
                members.setdefault(group, []).append(soulstone.id)
        return {group: tuple(sorted(ids)) for group, ids in sorted(members.items())}

    def summary(self) -> dict[str, object]:
        """Return the `check --json` document for this codex."""
        return {
            "soulstones": [s.summary() for s in self.soulstones],
            "conflicts": [list(pair) for pair in self.conflicts],
            "warnings": [w.as_dict() for w in self.warnings],
        }
