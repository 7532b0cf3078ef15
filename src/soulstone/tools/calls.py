"""Tool calls in engine answers (non-stream): parse Hermes text, validate arguments."""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, field
from typing import Any

import orjson
from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError

from soulstone.errors import Refusal
from soulstone.tools.policy import Policy

HERMES = re.compile(r"<tool_call>\s*(.*?)\s*</tool_call>", re.DOTALL)
_HEARTBEAT = re.compile(rb'request_heartbeat\\?"\s*:\s*true')


def asks_heartbeat(data: bytes) -> bool:
    """True when a tool call in this body sets `request_heartbeat: true`."""
    return _HEARTBEAT.search(data) is not None


class ToolCallInvalid(Refusal):
    """An answer's tool call does not parse or does not fit its schema (502)."""

    def __init__(self, problems: list[dict[str, Any]]) -> None:
        message = "; ".join(f"call {p['index']} ({p['name']}): {p['message']}" for p in problems)
        super().__init__(502, "TOOL_CALL_INVALID", message, problems=problems)
        self.problems = problems


@dataclass
class Validators:
    """One compiled JSON-schema validator per policy tool, built on first use."""

    policy: Policy
    compiled: dict[str, Draft202012Validator] = field(default_factory=dict)

    def problem(self, name: str, arguments: Any, unknown: str = "refuse") -> str | None:
        """Why these arguments do not fit the tool, or None.

        A tool the policy does not name is a problem when `unknown` is
        "refuse"; when it is "pass", its arguments need only be JSON.
        """
        tool = self.policy.by_name().get(name)
        if tool is None and unknown != "pass":
            return f"{name!r} is not a tool of the policy"
        if not isinstance(arguments, str):
            return "arguments must be a JSON string"
        try:
            value = orjson.loads(arguments)
        except orjson.JSONDecodeError as error:
            return f"arguments are not JSON: {error}"
        if tool is None:
            return None
        validator = self.compiled.get(name)
        if validator is None:
            try:
                validator = Draft202012Validator(tool.function.get("parameters") or {})
            except SchemaError as error:
                return f"the policy's schema is invalid: {error.message}"
            self.compiled[name] = validator
        failure = next(iter(validator.iter_errors(value)), None)
        if failure is None:
            return None
        where = "/" + "/".join(map(str, failure.absolute_path))
        return f"{failure.message} (at {where})"


def hermes_calls(message: dict[str, Any]) -> None:
    """Turn `<tool_call>{"name", "arguments"}</tool_call>` text into `tool_calls`, in place."""
    content = message.get("content")
    if not isinstance(content, str) or "<tool_call>" not in content:
        return
    calls = []
    for match in HERMES.finditer(content):
        try:
            call = orjson.loads(match.group(1))
            name, arguments = call["name"], call.get("arguments", {})
        except (orjson.JSONDecodeError, KeyError, TypeError):
            name, arguments = "", match.group(1)
        text = arguments if isinstance(arguments, str) else orjson.dumps(arguments).decode()
        calls.append({"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function",
                      "function": {"name": name, "arguments": text}})  # fmt: skip
    message["tool_calls"] = [*(message.get("tool_calls") or []), *calls]
    message["content"] = HERMES.sub("", content).strip() or None


def checked_answer(
    data: bytes, validators: Validators, hermes: bool, passthrough: bool, unknown: str = "refuse"
) -> bytes:
    """The answer, its tool calls parsed and validated; ToolCallInvalid unless passed through."""
    try:
        document = orjson.loads(data)
    except orjson.JSONDecodeError:
        return data
    if not isinstance(document, dict) or not isinstance(document.get("choices"), list):
        return data
    problems: list[dict[str, Any]] = []
    changed = False
    for choice in document["choices"]:
        message = choice.get("message") if isinstance(choice, dict) else None
        if not isinstance(message, dict):
            continue
        if hermes and "<tool_call>" in str(message.get("content")):
            hermes_calls(message)
            choice["finish_reason"] = "tool_calls"
            changed = True
        for index, call in enumerate(message.get("tool_calls") or []):
            function = call.get("function") if isinstance(call, dict) else None
            name = str((function or {}).get("name", ""))
            reason = validators.problem(name, (function or {}).get("arguments"), unknown)
            if reason is not None:
                problems.append({"index": index, "name": name, "message": reason})
    if problems and not passthrough:
        raise ToolCallInvalid(problems)
    if problems:
        document["soulstone_invalid_tool_calls"] = problems
        changed = True
    return orjson.dumps(document) if changed else data
