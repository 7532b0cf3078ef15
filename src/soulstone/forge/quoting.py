"""systemd quoting: words and values that survive Quadlet and systemd exactly."""

from __future__ import annotations

import re
from collections.abc import Iterable

_SAFE_WORD = re.compile(r"[A-Za-z0-9_@%+=:,./-]+")
_C_ESCAPES = {"\n": "\\n", "\t": "\\t", "\r": "\\r", "\a": "\\a", "\b": "\\b", "\f": "\\f",
              "\v": "\\v"}  # fmt: skip


def escape_specifiers(text: str) -> str:
    """Double `%` (systemd specifiers) and `$` (variable expansion in ExecStart=)."""
    return text.replace("%", "%%").replace("$", "$$")


def quote_word(word: str) -> str:
    """One argument for a systemd command line or assignment list, taken literally."""
    escaped = escape_specifiers(word)
    if _SAFE_WORD.fullmatch(escaped):
        return escaped
    out = []
    for char in escaped:
        if char in ("\\", '"'):
            out.append("\\" + char)
        elif char in _C_ESCAPES:
            out.append(_C_ESCAPES[char])
        elif not char.isprintable():
            code = ord(char)
            if code < 0x80:
                out.append(f"\\x{code:02x}")
            else:
                out.append(f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}")
        else:
            out.append(char)
    return '"' + "".join(out) + '"'


def command_line(words: Iterable[str]) -> str:
    """A whole systemd command line (or assignment list) of literal words."""
    return " ".join(quote_word(word) for word in words)


def single_value(text: str) -> str:
    """A one-value setting (HealthCmd=) taken literally; no newlines allowed."""
    if "\n" in text or text != text.strip():
        raise ValueError(f"{text!r}: a unit setting cannot hold newlines or edge whitespace")
    return escape_specifiers(text)


def mount_value(text: str) -> str:
    """A Volume= value taken literally; Quadlet cannot carry whitespace in mounts."""
    if any(char.isspace() for char in text):
        raise ValueError(
            f"{text!r}: Quadlet cannot mount a path with whitespace "
            "(it copies the path into RequiresMountsFor=, a space-separated list)"
        )
    return escape_specifiers(text)


def quadlet_exec_problem(argv: tuple[str, ...]) -> str | None:
    """Why Quadlet's Exec= cannot carry this argv exactly, or None when it can."""
    if "" in argv:
        return 'Podman\'s quadlet drops every argument after an empty one: remove the ""'
    if ";" in argv:
        return "a lone ';' reaches ExecStart= unquoted, where systemd reads it as a separator"
    return None
