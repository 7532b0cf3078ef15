"""systemd's command-line rules, for reading generated ExecStart= lines back into argv.

Specifiers first (`%%` -> `%`, others such as `%t` -> `<%t>`), then words
(whitespace-separated; double or single quotes; C escapes inside and outside
quotes), then variables at exec time (`$$` -> `$`; a bare `$` raises ValueError).
"""

from __future__ import annotations

_SIMPLE = {"a": "\a", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v",
           "\\": "\\", '"': '"', "'": "'", "s": " "}  # fmt: skip
_HEX = {"x": 2, "u": 4, "U": 8}


def expand_specifiers(line: str) -> str:
    """Replace `%%` by `%` and other specifiers `%x` by the marker `<%x>`."""
    out = []
    i = 0
    while i < len(line):
        if line[i] == "%":
            following = line[i + 1 : i + 2]
            out.append("%" if following == "%" else f"<%{following}>")
            i += 2
        else:
            out.append(line[i])
            i += 1
    return "".join(out)


def _unescape(text: str, i: int) -> tuple[str, int]:
    """Decode the escape starting after the backslash at text[i-1]; return (char, next i)."""
    char = text[i]
    if char in _SIMPLE:
        return _SIMPLE[char], i + 1
    if char in _HEX:
        digits = text[i + 1 : i + 1 + _HEX[char]]
        return chr(int(digits, 16)), i + 1 + _HEX[char]
    if char in "01234567":
        return chr(int(text[i : i + 3], 8)), i + 3
    raise ValueError(f"unknown escape \\{char}")


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
            raise ValueError("unterminated quote")
        words.append("".join(word))


def expand_variables(word: str) -> str:
    """Replace `$$` by `$`; a bare `$` (a variable reference) is unexpected here."""
    out = []
    i = 0
    while i < len(word):
        if word[i] == "$":
            if word[i + 1 : i + 2] != "$":
                raise ValueError(f"unescaped variable reference in {word!r}")
            out.append("$")
            i += 2
        else:
            out.append(word[i])
            i += 1
    return "".join(out)


def exec_argv(line: str) -> list[str]:
    """The argv systemd runs for an ExecStart= value (without the `ExecStart=`)."""
    return [expand_variables(w) for w in split_words(expand_specifiers(line))]
