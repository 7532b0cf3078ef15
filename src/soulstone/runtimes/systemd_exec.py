"""systemd's command-line rules: a generated service's Exec lines read back into argv.

The podman runtime runs the commands that Podman's quadlet generator wrote
into a `.service` file, exactly as systemd would: specifiers first (`%t`,
`%N`, `%%` …), then words (whitespace-separated; double or single quotes; C
escapes inside and outside quotes, as `extract_first_word` with
`EXTRACT_UNQUOTE | EXTRACT_CUNESCAPE`), then variables (`$$` -> `$`; the
generated units reference none, so a bare `$` is refused).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

_SIMPLE = {"a": "\a", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v",
           "\\": "\\", '"': '"', "'": "'", "s": " "}  # fmt: skip
_HEX = {"x": 2, "u": 4, "U": 8}
_PREFIXES = "-@:+!"


class UnitCommandError(ValueError):
    """An Exec line that cannot be read as systemd would read it."""


def expand_specifiers(line: str, value: Callable[[str], str]) -> str:
    """Replace `%%` by `%` and every other specifier `%x` by `value("x")`."""
    out = []
    i = 0
    while i < len(line):
        if line[i] == "%":
            following = line[i + 1 : i + 2]
            if not following:
                raise UnitCommandError(f"a lone '%' ends {line!r}")
            out.append("%" if following == "%" else value(following))
            i += 2
        else:
            out.append(line[i])
            i += 1
    return "".join(out)


def specifier_table(values: Mapping[str, str]) -> Callable[[str], str]:
    """A specifier lookup over a table; an unknown specifier raises UnitCommandError."""

    def value(letter: str) -> str:
        try:
            return values[letter]
        except KeyError:
            raise UnitCommandError(f"the specifier %{letter} is not supported here") from None

    return value


def _unescape(text: str, i: int) -> tuple[str, int]:
    """Decode the escape starting after the backslash at text[i-1]; return (char, next i)."""
    if i >= len(text):
        raise UnitCommandError("a trailing backslash")
    char = text[i]
    if char in _SIMPLE:
        return _SIMPLE[char], i + 1
    if char in _HEX:
        digits = text[i + 1 : i + 1 + _HEX[char]]
        return chr(int(digits, 16)), i + 1 + _HEX[char]
    if char in "01234567":
        return chr(int(text[i : i + 3], 8)), i + 3
    raise UnitCommandError(f"unknown escape \\{char}")


def split_words(line: str) -> list[str]:
    """Split like systemd's extract_first_word(EXTRACT_UNQUOTE | EXTRACT_CUNESCAPE)."""
    words: list[str] = []
    i = 0
    while True:
        while i < len(line) and line[i] in " \t\n":
            i += 1
        if i >= len(line):
            return words
        word: list[str] = []
        quote: str | None = None
        while i < len(line):
            char = line[i]
            if quote is None and char in " \t\n":
                break
            if char == "\\":
                decoded, i = _unescape(line, i + 1)
                word.append(decoded)
                continue
            if quote is None and char in "\"'":
                quote = char
            elif char == quote:
                quote = None
            else:
                word.append(char)
            i += 1
        if quote is not None:
            raise UnitCommandError("unterminated quote")
        words.append("".join(word))


def expand_variables(word: str) -> str:
    """Replace `$$` by `$`; a bare `$` (a variable reference) is refused."""
    out = []
    i = 0
    while i < len(word):
        if word[i] == "$":
            if word[i + 1 : i + 2] != "$":
                raise UnitCommandError(f"unescaped variable reference in {word!r}")
            out.append("$")
            i += 2
        else:
            out.append(word[i])
            i += 1
    return "".join(out)


@dataclass(frozen=True)
class UnitCommand:
    """One Exec line read back: the argv, and whether a failure is ignored (`-` prefix)."""

    argv: tuple[str, ...]
    ignore_failure: bool = False


def exec_words(text: str, value: Callable[[str], str]) -> tuple[str, ...]:
    """The words of a command line: specifiers, then quotes and escapes, then `$$`."""
    return tuple(expand_variables(w) for w in split_words(expand_specifiers(text, value)))


def exec_command(line: str, value: Callable[[str], str]) -> UnitCommand:
    """The command systemd runs for an ExecStart=-style value (prefixes such as `-` first)."""
    stripped = line.lstrip()
    prefixes = ""
    while stripped and stripped[0] in _PREFIXES:
        prefixes += stripped[0]
        stripped = stripped[1:]
    argv = exec_words(stripped, value)
    if not argv:
        raise UnitCommandError(f"an empty command line: {line!r}")
    return UnitCommand(argv, ignore_failure="-" in prefixes)


def service_settings(text: str, section: str = "Service") -> list[tuple[str, str]]:
    """The `KEY=VALUE` settings of one section of a unit file, in order."""
    found: list[tuple[str, str]] = []
    current = None
    pending = ""
    for raw in text.splitlines():
        line = pending + raw
        pending = ""
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        stripped = line.strip()
        if not stripped or stripped[0] in "#;":
            continue
        if stripped.startswith("[") and stripped.endswith("]"):
            current = stripped[1:-1]
        elif current == section and "=" in stripped:
            key, _, value = stripped.partition("=")
            found.append((key.strip(), value.strip()))
    return found
