"""Checks for remote soulstones (SPEC C12): address, key reference, what a remote may declare.

Pure: each check returns (field, message) pairs for the caller to report.
"""

from __future__ import annotations

from typing import Any

from soulstone.codex.fields import ENV_NAME_RE
from soulstone.codex.models import SoulstoneDecl
from soulstone.codex.remote import (
    LITERAL_KEY_FIELDS,
    LOCAL_ONLY_FIELDS,
    REMOTE_ONLY_FIELDS,
    RemoteAddress,
    parse_remote,
)

REMOTE_START_TIMEOUT = 10.0  # a remote is only probed: it answers at once or not at all
LITERAL_KEY_MESSAGE = (
    "a literal key is refused: soulstone never keeps a secret in the codex; put the key "
    "in a file (key_file = PATH, mode 0600) or an environment variable (key_env = NAME)"
)
BUDGET_WARNING = (
    "prompt tokens are counted by the remote's POST /tokenize (a soulstone gateway or "
    "vLLM has one); where it has none, this gateway checks only max_output_tokens and "
    "context budgets are the remote's (declare tokenizer = PATH, the model's tokenizer "
    "folder, to count them here)"
)


def literal_keys(table: dict[str, Any]) -> tuple[dict[str, Any], list[tuple[str, str]]]:
    """Split off table keys that would hold a secret (`key = "…"`), with their refusal."""
    kept = {k: v for k, v in table.items() if k.lower() not in LITERAL_KEY_FIELDS}
    found = [(k, LITERAL_KEY_MESSAGE) for k in table if k.lower() in LITERAL_KEY_FIELDS]
    return kept, found


def _set(decl: SoulstoneDecl, field: str) -> bool:
    return field in decl.model_fields_set


def remote_problems(decl: SoulstoneDecl) -> list[tuple[str, str]]:
    """What a remote declaration gets wrong: its address, key reference, local-only fields."""
    found: list[tuple[str, str]] = []
    assert decl.remote is not None
    parsed = parse_remote(decl.remote)
    if not isinstance(parsed, RemoteAddress):
        found.append(("remote", parsed))
    for field in LOCAL_ONLY_FIELDS:
        if _set(decl, field):
            found.append((field, f"a remote soulstone runs elsewhere and soulstone never "
                          f"starts it: {field} has no meaning here (remove it)"))  # fmt: skip
    if decl.key_file is not None and decl.key_env is not None:
        found.append(("key_env", "set either key_file or key_env, not both"))
    if decl.key_file is not None and not decl.key_file.startswith(("/", "~/")):
        found.append(("key_file", f"{decl.key_file!r} is not an absolute path"))
    if decl.key_env is not None and ENV_NAME_RE.fullmatch(decl.key_env) is None:
        found.append(("key_env", f"malformed variable name {decl.key_env!r}"))
    if decl.tokenizer is not None and not decl.tokenizer.startswith(("/", "~/")):
        found.append(("tokenizer", f"{decl.tokenizer!r} is not an absolute path (a folder "
                      "holding the model's tokenizer.json)"))  # fmt: skip
    return found


def local_problems(decl: SoulstoneDecl) -> list[tuple[str, str]]:
    """Remote-only fields on a local soulstone."""
    found = [(field, f"{field} is for a remote soulstone: set remote too, or remove it")
             for field in REMOTE_ONLY_FIELDS if getattr(decl, field) is not None]  # fmt: skip
    if decl.models == "discover":
        found.append(("models", '"discover" reads a remote\'s own model list: set remote too, '
                      "or list the served names"))  # fmt: skip
    return found
