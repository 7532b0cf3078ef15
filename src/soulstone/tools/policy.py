"""The tools policy (pure): canonical JSON, pinned hashes, the request check, the default."""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from soulstone.errors import Refusal


class HeartbeatLimits(BaseModel):
    """Limits on heartbeat chains (SPEC C6)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    heartbeat_rps_limit: int = Field(3, ge=1)
    heartbeat_cooldown_ms: int = Field(750, ge=0)
    max_chain_depth: int = Field(8, ge=1)
    max_chain_duration_ms: int = Field(60000, ge=1)


class PinnedTool(BaseModel):
    """One allowed tool: its function declaration and the sha256 of its canonical JSON."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    sha256: str
    function: dict[str, Any]

    @property
    def name(self) -> str:
        """The tool's name."""
        return str(self.function.get("name", ""))


class Policy(BaseModel):
    """tools.yaml: heartbeat limits, the pinned tools, optional per-client and per-model rules."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    version: int = 1
    heartbeat: HeartbeatLimits = HeartbeatLimits()
    clients: dict[str, HeartbeatLimits] = {}
    models: dict[str, list[str]] = {}
    tools: list[PinnedTool] = []
    # Tools the policy does not name: passed unvalidated, or refused. None: pass, except
    # under `serve --strict`, where the gateway makes it `refuse`.
    unknown_tools: Literal["pass", "refuse"] | None = None

    def by_name(self) -> dict[str, PinnedTool]:
        """The tools by name."""
        return {tool.name: tool for tool in self.tools}


class ToolSchemaMismatch(Refusal):
    """A request's tool is not the policy's (400): names the tool and the first difference."""

    def __init__(self, tool: str, pointer: str, message: str) -> None:
        super().__init__(400, "TOOL_SCHEMA_MISMATCH", message, tool=tool, pointer=pointer)
        self.tool, self.pointer = tool, pointer


def canonical(value: Any) -> bytes:
    """Canonical JSON: keys sorted, no spaces, UTF-8."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def pin(function: dict[str, Any]) -> str:
    """The sha256 (hex) of a function declaration's canonical JSON."""
    return hashlib.sha256(canonical(function)).hexdigest()


def drifted(policy: Policy) -> list[str]:
    """Names of the tools whose pinned hash no longer matches their function."""
    return [tool.name for tool in policy.tools if tool.sha256 != pin(tool.function)]


def repinned(policy: Policy) -> Policy:
    """The policy with every hash recomputed."""
    tools = [PinnedTool(sha256=pin(t.function), function=t.function) for t in policy.tools]
    return policy.model_copy(update={"tools": tools})


def _escape(key: str) -> str:
    return key.replace("~", "~0").replace("/", "~1")


def first_difference(expected: Any, got: Any, at: str = "") -> str | None:
    """The JSON pointer of the first place two values differ, or None when equal."""
    if isinstance(expected, dict) and isinstance(got, dict):
        for key in sorted(set(expected) | set(got)):
            if key not in expected or key not in got:
                return f"{at}/{_escape(key)}"
            found = first_difference(expected[key], got[key], f"{at}/{_escape(key)}")
            if found is not None:
                return found
        return None
    if isinstance(expected, list) and isinstance(got, list):
        for index, (a, b) in enumerate(zip(expected, got, strict=False)):
            found = first_difference(a, b, f"{at}/{index}")
            if found is not None:
                return found
        return None if len(expected) == len(got) else f"{at}/{min(len(expected), len(got))}"
    if canonical(expected) != canonical(got):
        return at or "/"
    return None


def check_tools(
    tools: Any, policy: Policy, models: Sequence[str], unknown: Literal["pass", "refuse"]
) -> None:
    """Every requested tool the policy names must equal its pinned schema; else raise.

    `models` are the requested model and its soulstone's served names: a
    per-model rule of any of them applies (an adapter does not skip its base's
    rules), and under a rule only the tools it lists are allowed. A tool the
    policy does not name passes when `unknown` is "pass".
    """
    if not isinstance(tools, list):
        raise ToolSchemaMismatch("", "/tools", "`tools` must be a list")
    pinned_tools = policy.by_name()
    rules = [(m, set(policy.models[m])) for m in dict.fromkeys(models) if m in policy.models]
    for index, tool in enumerate(tools):
        function = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(function, dict) or tool.get("type", "function") != "function":
            raise ToolSchemaMismatch("", f"/tools/{index}", f"tool {index} is not a function")
        name = str(function.get("name", ""))
        for model, allowed in rules:
            if name not in allowed:
                message = f"tool {name!r} is not allowed for {model} by the tools policy"
                raise ToolSchemaMismatch(name, "/name", message)
        pinned = pinned_tools.get(name)
        if pinned is None:
            if unknown == "pass":
                continue
            raise ToolSchemaMismatch(name, "/name", f"tool {name!r} is not in the tools policy "
                                     "(unknown tools are refused here)")  # fmt: skip
        if canonical(function) != canonical(pinned.function):
            pointer = first_difference(pinned.function, function) or "/"
            raise ToolSchemaMismatch(name, pointer, f"tool {name!r} differs from the pinned "
                                     f"schema at {pointer}")  # fmt: skip


def _tool(name: str, description: str, properties: dict[str, Any], required: list[str]) -> Any:
    props = copy.deepcopy(properties)
    props["request_heartbeat"] = {
        "type": "boolean",
        "description": "Ask for another turn right after this call (a heartbeat).",
    }
    return {
        "name": name,
        "description": description,
        "parameters": {"type": "object", "properties": props, "required": required,
                       "additionalProperties": False},
    }  # fmt: skip


_TEXT = {"type": "string"}
_LIMIT = {"type": "integer", "minimum": 1, "maximum": 100}
DEFAULT_FUNCTIONS = [
    _tool("store_core", "Write a named block of core memory.",
          {"label": _TEXT, "value": _TEXT}, ["label", "value"]),
    _tool("fetch_core", "Read a named block of core memory.", {"label": _TEXT}, ["label"]),
    _tool("append_fifo", "Append a message to the FIFO context queue.",
          {"role": {"type": "string", "enum": ["user", "assistant", "system", "tool"]},
           "content": _TEXT}, ["role", "content"]),
    _tool("evict_fifo", "Evict the oldest messages of the FIFO queue to recall storage.",
          {"count": _LIMIT}, ["count"]),
    _tool("write_recall", "Store a message in recall memory.", {"content": _TEXT}, ["content"]),
    _tool("search_recall", "Search recall memory.",
          {"query": _TEXT, "page": {"type": "integer", "minimum": 0}}, ["query"]),
    _tool("search_archival", "Search archival memory.",
          {"query": _TEXT, "top_k": _LIMIT}, ["query"]),
    _tool("ingest_archival", "Store a passage in archival memory.",
          {"content": _TEXT, "source": _TEXT}, ["content"]),
    _tool("record_heartbeat", "Record a heartbeat tick with a reason.",
          {"reason": _TEXT}, ["reason"]),
]  # fmt: skip


def default_policy() -> Policy:
    """The built-in policy: the nine memory tools, pinned, and the default heartbeat limits."""
    return Policy(tools=[PinnedTool(sha256=pin(f), function=f) for f in DEFAULT_FUNCTIONS])
