"""YAML text for the Kubernetes forge, with comments: every string double-quoted (pure).

PyYAML cannot write comments, and the forge's manifests carry notes for the
user, so this writes the small subset it needs: mappings, sequences, strings,
integers, booleans and null, in block style. Strings are always double-quoted,
with every character a YAML parser could read otherwise (line breaks, control
characters, BOM, the Unicode line separators) escaped.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

_PLAIN_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_./-]*")
# Plain words that YAML 1.1 parsers (PyYAML, go-yaml) read as null or a boolean.
_RESERVED = frozenset({"null", "true", "false", "yes", "no", "on", "off", "y", "n"})
_SHORT_ESCAPES = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\t": "\\t", "\r": "\\r"}
# YAML 1.1 (PyYAML, go-yaml) reads NEL, LS and PS as line breaks, and a BOM specially.
_ESCAPED_ANYWAY = frozenset("\x85\u2028\u2029\ufeff\ufffe\uffff")


@dataclass(frozen=True)
class Noted:
    """A mapping value with comment lines written just above its key."""

    value: object
    notes: tuple[str, ...]


def quoted(text: str) -> str:
    """A YAML double-quoted scalar that any YAML parser reads back as exactly `text`."""
    out = []
    for char in text:
        code = ord(char)
        if char in _SHORT_ESCAPES:
            out.append(_SHORT_ESCAPES[char])
        elif code < 0x20 or 0x7F <= code <= 0x9F or char in _ESCAPED_ANYWAY:
            out.append(f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}")
        elif 0xD800 <= code <= 0xDFFF:
            raise ValueError(f"{text!r}: a lone surrogate cannot be written as YAML")
        else:
            out.append(char)
    return '"' + "".join(out) + '"'


def comment_text(text: str) -> str:
    """`text` made safe for one comment line: no line breaks, no control characters.

    Runs of whitespace become one space; leading spaces (an indent) are kept.
    """
    indent = text[: len(text) - len(text.lstrip(" "))]
    return indent + " ".join("".join(c if c.isprintable() else " " for c in text).split())


def comments(notes: Sequence[str], indent: int = 0) -> list[str]:
    """Comment lines, one per note (each note kept on one line)."""
    pad = " " * indent
    return [f"{pad}# {comment_text(note)}".rstrip() for note in notes]


def _key(key: str) -> str:
    plain = _PLAIN_KEY.fullmatch(key) and key.lower() not in _RESERVED
    return key if plain else quoted(key)


def _scalar(value: object) -> str | None:
    """The inline form of a scalar or an empty collection, or None for a block."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return quoted(value)
    if isinstance(value, Mapping) and not value:
        return "{}"
    if isinstance(value, (list, tuple)) and not value:
        return "[]"
    if isinstance(value, (Mapping, list, tuple)):
        return None
    raise TypeError(f"cannot write {type(value).__name__} as YAML")


def _block(value: object, indent: int) -> list[str]:
    pad = " " * indent
    lines: list[str] = []
    if isinstance(value, Mapping):
        for key, item in value.items():
            if isinstance(item, Noted):
                lines += comments(item.notes, indent)
                item = item.value
            inline = _scalar(item)
            if inline is not None:
                lines.append(f"{pad}{_key(key)}: {inline}")
            else:
                lines.append(f"{pad}{_key(key)}:")
                lines += _block(item, indent + 2)
        return lines
    assert isinstance(value, (list, tuple))
    for item in value:
        inline = _scalar(item)
        if inline is not None:
            lines.append(f"{pad}- {inline}")
            continue
        inner = _block(item, indent + 2)
        first = next(i for i, line in enumerate(inner) if not line.lstrip().startswith("#"))
        lines += inner[:first]  # an item's leading comments stay above its dash
        lines.append(f"{pad}- {inner[first][indent + 2 :]}")
        lines += inner[first + 1 :]
    return lines


def document(value: Mapping[str, object]) -> str:
    """One YAML document (no `---`) in block style, ending with a newline."""
    return "\n".join(_block(value, 0)) + "\n"


def stream(header: Sequence[str], documents: Sequence[Mapping[str, object]]) -> str:
    """Header lines (already comments), then each document after its own `---`."""
    parts = ["\n".join(header) + "\n"] if header else []
    parts += [f"---\n{document(doc)}" for doc in documents]
    return "".join(parts)
