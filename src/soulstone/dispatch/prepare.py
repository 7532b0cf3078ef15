"""Preparation (pure): route a call, check its permissions, translate legacy fields, tools policy.

Nothing here waits or changes shared state: values in, a Prepared value out,
or a Refusal.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal, NamedTuple

from soulstone.codex.models import Codex, Soulstone
from soulstone.dispatch.call import Call
from soulstone.errors import Refusal
from soulstone.guard.budget import NO_ASK, OutputAsk, output_ask
from soulstone.lora.registry import AdapterRecord
from soulstone.tools.legacy import translate_functions
from soulstone.tools.policy import Policy, check_tools

UnknownTools = Literal["pass", "refuse"]


class Prepared(NamedTuple):
    """A call routed and checked: where it goes and what the engine gets (immutable)."""

    soulstone: Soulstone
    model: str
    adapter: AdapterRecord | None
    document: dict[str, Any]  # the call's own document unless a field had to change
    changed: bool
    output: OutputAsk
    unknown_tools: UnknownTools
    hermes: bool  # the engine prints tool calls as <tool_call> text
    tools: bool  # the answer's tool calls are checked (chat with tools, or Hermes text)


def route(
    document: Mapping[str, Any], routes: Mapping[str, Soulstone],
    adapters: Mapping[str, AdapterRecord], codex: Codex,
) -> tuple[str, Soulstone, AdapterRecord | None]:  # fmt: skip
    """The requested model, the soulstone serving it, and the adapter it names (if one)."""
    model = document.get("model")
    if not isinstance(model, str) or not model:
        raise Refusal(400, "MODEL_MISSING", "the request names no `model`", param="model")
    soulstone = routes.get(model)
    if soulstone is not None:
        return model, soulstone, None
    record = adapters.get(model)
    base = codex.get(record.base) if record is not None else None
    if record is None or base is None:
        names = sorted({*routes, *adapters})
        raise Refusal(
            404, "MODEL_NOT_FOUND", f"no soulstone serves the model {model!r}; "
            f"valid models: {', '.join(names)}", param="model", models=names,
        )  # fmt: skip
    return model, base, record


def unknown_tools_mode(call: Call, policy: Policy, strict: bool) -> UnknownTools:
    """Whether tools the policy does not name pass: the client's say, the policy's, the mode's."""
    return call.client.unknown_tools or policy.unknown_tools or ("refuse" if strict else "pass")


def prepare(
    call: Call, routes: Mapping[str, Soulstone], adapters: Mapping[str, AdapterRecord],
    codex: Codex, policy: Policy, strict: bool = False,
) -> Prepared:  # fmt: skip
    """Route, permissions, legacy `functions`, tools policy and output fields; Refusal if not."""
    document = call.document
    model, soulstone, adapter = route(document, routes, adapters, codex)
    if not call.client.may_use(model):
        raise Refusal(403, "MODEL_FORBIDDEN", f"{call.client.name} may not use {model!r}",
                      param="model")  # fmt: skip
    changed = False
    if call.endpoint == "chat" and ("functions" in document or "function_call" in document):
        document = dict(document)
        changed = translate_functions(document)
    if call.stream != (document.get("stream") is True):
        document = {**document, "stream": call.stream}
        changed = True
    hermes = soulstone.tool_parser == "hermes"
    unknown: UnknownTools = "pass"  # only asked when there are tools or tool-call text
    if "tools" in document or hermes:
        unknown = unknown_tools_mode(call, policy, strict)
    if "tools" in document:
        check_tools(document["tools"], policy, (model, *soulstone.models), unknown)
    output = output_ask(document) if call.endpoint != "embeddings" else NO_ASK
    tools = call.endpoint == "chat" and ("tools" in document or hermes)
    return Prepared(soulstone, model, adapter, document, changed, output, unknown, hermes, tools)
