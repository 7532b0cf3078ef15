"""Legacy `functions`/`function_call` requests to `tools`/`tool_choice` (pure)."""

from __future__ import annotations

from typing import Any


def translate_functions(body: dict[str, Any]) -> bool:
    """Rewrite a chat request's legacy fields in place; True when anything changed."""
    changed = False
    functions = body.pop("functions", None)
    if isinstance(functions, list):
        body.setdefault("tools", [{"type": "function", "function": f} for f in functions])
        changed = True
    call = body.pop("function_call", None)
    if call is not None:
        if isinstance(call, dict) and "name" in call:
            body.setdefault("tool_choice", {"type": "function", "function": {"name": call["name"]}})
        elif call in ("none", "auto"):
            body.setdefault("tool_choice", call)
        changed = True
    return changed
