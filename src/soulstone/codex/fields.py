"""Field-level checks that turn raw values into Problems: types, names, formats."""

from __future__ import annotations

import difflib
import re
import shlex
from typing import Any

from pydantic import ValidationError

from soulstone.codex.engines import ENGINE_NAMES
from soulstone.codex.models import FIELD_NAMES, TABLE_FIELDS, SoulstoneDecl
from soulstone.codex.remote import SOCKET_PATH_MAX as SOCKET_PATH_MAX

MAP_FIELDS = frozenset({"env"})

ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
TAG_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,62}")
MODEL_RE = re.compile(r"[^\s\x00-\x1f\x7f]{1,256}")

EXPECTED: dict[str, str] = {
    "description": "a string",
    "engine": "one of " + ", ".join(ENGINE_NAMES),
    "image": "a string",
    "exec": "a list of strings or one string",
    "port": "an integer from 1 to 65535",
    "socket": "an absolute path (a string)",
    "port_expose": "true or false",
    "model": "a Hugging Face repo id 'org/name' (a string)",
    "revision": "a commit hash, tag or branch of the model (a string)",
    "model_path": "a path (a string)",
    "volumes": "a list of 'host:container[:options]' strings",
    "env": "a table of string values",
    "devices": "a list of strings",
    "groups": "a list of strings",
    "capabilities": "a list of strings",
    "models": 'a list of strings, or "discover" (a remote\'s own list)',
    "health": "a table (path, start_timeout, interval)",
    "lora": "a table (max_loras, max_lora_rank, max_cpu_loras)",
    "ttl": "a positive integer (seconds)",
    "runtime": '"quadlet", "podman" or "process"',
    "tool_parser": '"none" or "hermes"',
    "warmup": "true, false or a table (prompt, max_tokens)",
    "fallback": "a model name served by another soulstone (a string)",
    "remote": "an address like https://host:port/v1 (a string)",
    "key_file": "a path to a file holding the remote's key (a string)",
    "key_env": "the name of an environment variable holding the remote's key",
    "tokenizer": "a path to the remote model's tokenizer folder (a string)",
    "sleep": "true or false",
    "health.path": "a string",
    "health.start_timeout": "a positive number of seconds",
    "health.interval": "a positive number of seconds",
    "lora.max_loras": "a positive integer",
    "lora.max_lora_rank": "a positive integer",
    "lora.max_cpu_loras": "a positive integer",
    "warmup.prompt": "a string",
    "warmup.max_tokens": "a positive integer",
}

_TOML_TYPES = {
    str: "a string",
    int: "an integer",
    float: "a float",
    bool: "a boolean",
    list: "an array",
    dict: "a table",
}


def describe(value: Any) -> str:
    """Name a TOML value for a message: `"8000" (a string)`."""
    kind = _TOML_TYPES.get(type(value), type(value).__name__)
    text = repr(value)
    if len(text) > 40:
        text = text[:37] + "..."
    return f"{text} ({kind})"


def did_you_mean(word: str, choices: frozenset[str] | tuple[str, ...]) -> str:
    """Return ` (did you mean 'x'?)` for a close choice, else ''."""
    close = difflib.get_close_matches(word, sorted(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def unknown_keys(table: dict[str, Any]) -> tuple[dict[str, Any], list[tuple[str, str]]]:
    """Split off keys the schema does not know; return the rest and (field, message) pairs."""
    known: dict[str, Any] = {}
    found: list[tuple[str, str]] = []
    for key, value in table.items():
        if key not in FIELD_NAMES:
            hint = did_you_mean(key, FIELD_NAMES)
            if not hint and isinstance(value, dict):
                hint = " (soulstones nest one level at most: [group.name])"
            found.append((key, f"unknown key {key!r}{hint}"))
            continue
        if key in TABLE_FIELDS and isinstance(value, dict):
            allowed = TABLE_FIELDS[key]
            inner = {}
            for sub, subvalue in value.items():
                if sub in allowed:
                    inner[sub] = subvalue
                else:
                    found.append(
                        (f"{key}.{sub}", f"unknown key {sub!r}{did_you_mean(sub, allowed)}")
                    )
            value = inner
        known[key] = value
    return known, found


def typed(table: dict[str, Any]) -> tuple[SoulstoneDecl, list[tuple[str, str]]]:
    """Type-check a table; bad fields are reported and dropped so the rest still resolves."""
    try:
        return SoulstoneDecl.model_validate(table), []
    except ValidationError as error:
        found: dict[str, str] = {}
        for detail in error.errors():
            loc = [part for part in detail["loc"] if isinstance(part, str | int)]
            top = str(loc[0])
            field = top
            if top in TABLE_FIELDS and len(loc) > 1 and isinstance(loc[1], str):
                field = f"{top}.{loc[1]}"
            if field in found:
                continue
            value: Any = table
            for part in loc:
                try:
                    value = value[part]
                except (KeyError, IndexError, TypeError):
                    break
            where = ""
            if len(loc) > 1 and isinstance(loc[1], int):
                where = f"item {loc[1] + 1}: "
            elif len(loc) > 1 and top in MAP_FIELDS:
                where = f"key {loc[1]!r}: "
            found[field] = (
                f"{where}expected {EXPECTED.get(field, detail['msg'])}, got {describe(value)}"
            )
        bad_tops = {field.split(".")[0] for field in found}
        rest = {k: v for k, v in table.items() if k not in bad_tops}
        return SoulstoneDecl.model_validate(rest), list(found.items())


def split_exec(value: list[str] | str) -> tuple[tuple[str, ...], str | None]:
    """Turn `exec` into argv; a string is split like a shell, newlines as spaces."""
    if isinstance(value, list):
        argv = tuple(value)
    else:
        try:
            argv = tuple(shlex.split(value.replace("\\\n", ""), comments=False, posix=True))
        except ValueError as error:
            return (), f"cannot split the command like a shell: {str(error).lower()}"
    if not argv:
        return (), "the command is empty"
    return argv, None


def volume_problem(volume: str) -> str | None:
    """Explain what is wrong with a `host:container[:options]` volume, or None."""
    parts = volume.split(":")
    if len(parts) not in (2, 3) or not all(parts):
        return f"malformed volume {volume!r}: expected 'host:container[:options]'"
    if not parts[1].startswith("/"):
        return f"volume {volume!r}: the container path must be absolute"
    return None
