"""Training data: OpenAI fine-tuning chat examples, one JSON object per line (checks are pure).

    {"messages": [{"role": "user", "content": "..."}, {"role": "assistant", "content": "..."}]}

A line is refused, naming its number, when it is not JSON, not such an
object, or has no assistant turn to learn from; the trainer refuses one
longer than the model's context the same way (it has the tokenizer). Blank
lines are skipped. `capture:CLIENT[:SINCE]` names a client's capture file
instead of a path; its lines carry `created` (UTC, ISO 8601), which SINCE
(a date, a date and time, or an age such as `7d`, `12h`, `30m`) filters on.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import orjson

from soulstone.errors import SoulstoneError

ROLES = frozenset({"system", "developer", "user", "assistant", "tool"})
MAX_LISTED = 20  # refused lines named in one error
CAPTURE_PREFIX = "capture:"
_AGE = re.compile(r"(\d+)([smhd])")
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


class TrainDataRefused(SoulstoneError):
    """Training data that cannot be used; the message names the file and each bad line."""


@dataclass(frozen=True)
class Example:
    """One checked example: the line it came from and its messages (text content only)."""

    line: int
    messages: tuple[dict[str, str], ...]

    def as_json(self) -> bytes:
        """The line the trainer reads: `{"line": N, "messages": [...]}`."""
        return orjson.dumps({"line": self.line, "messages": list(self.messages)})


def _text(content: Any) -> str | None:
    """Content as text: a string, or a list of text parts joined; None when it is neither."""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(
        isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)
        for part in content
    ):
        return "".join(part["text"] for part in content)
    return None


def check_document(document: Any) -> tuple[dict[str, str], ...] | str:
    """The example's messages, or why the line cannot be used."""
    if not isinstance(document, dict):
        return "not a JSON object"
    messages = document.get("messages")
    if not isinstance(messages, list) or not messages:
        return 'no "messages" list'
    kept: list[dict[str, str]] = []
    for index, message in enumerate(messages, 1):
        if not isinstance(message, dict):
            return f"message {index} is not an object"
        role = message.get("role")
        if role not in ROLES:
            return f"message {index} has role {role!r}: use one of {', '.join(sorted(ROLES))}"
        text = _text(message.get("content"))
        if text is None:
            if role == "assistant" and message.get("tool_calls"):
                return f"message {index} is a tool call: only text answers can be learned"
            return f"message {index} has no text content"
        kept.append({"role": str(role), "content": text})
    if not any(m["role"] == "assistant" and m["content"] for m in kept):
        return "no assistant turn (nothing to learn)"
    return tuple(kept)


def parse_since(text: str, now: float) -> float:
    """SINCE as a UTC timestamp: an ISO date or date and time, or an age (`7d`, `12h`, `30m`)."""
    age = _AGE.fullmatch(text)
    if age is not None:
        return now - int(age.group(1)) * _SECONDS[age.group(2)]
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise TrainDataRefused(
            f"SINCE {text!r} is neither a date (2026-11-30), a date and time "
            "(2026-11-30T12:00:00Z) nor an age (7d, 12h, 30m)"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def _created(document: Any) -> float | None:
    created = document.get("created") if isinstance(document, dict) else None
    if not isinstance(created, str):
        return None
    try:
        return datetime.fromisoformat(created.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def check_lines(lines: Iterable[bytes], where: str, since: float | None = None) -> list[Example]:
    """Every usable example; TrainDataRefused naming each bad line (`FILE:LINE: reason`).

    With `since`, lines whose `created` is older (or missing) are left out.
    """
    examples: list[Example] = []
    problems: list[str] = []
    for number, raw in enumerate(lines, 1):
        if not raw.strip():
            continue
        try:
            document = orjson.loads(raw)
        except orjson.JSONDecodeError as error:
            problems.append(f"{where}:{number}: not JSON ({error})")
            continue
        if since is not None and (_created(document) or 0.0) < since:
            continue
        checked = check_document(document)
        if isinstance(checked, str):
            problems.append(f"{where}:{number}: {checked}")
        else:
            examples.append(Example(number, checked))
    if problems:
        listed = problems[:MAX_LISTED]
        more = len(problems) - len(listed)
        tail = [f"… and {more} more"] if more else []
        raise TrainDataRefused("\n".join([f"{where}: {len(problems)} unusable line"
                                          f"{'s' if len(problems) != 1 else ''}:", *listed,
                                          *tail]))  # fmt: skip
    if not examples:
        raise TrainDataRefused(f"{where}: no examples to train on")
    return examples


def capture_source(spec: str, capture_folder: Path, now: float) -> tuple[Path, float | None]:
    """`capture:CLIENT[:SINCE]` as the client's capture file and the UTC timestamp to start at."""
    client, _, since = spec.removeprefix(CAPTURE_PREFIX).partition(":")
    if not client:
        raise TrainDataRefused(f"{spec!r}: name a client (capture:CLIENT or capture:CLIENT:SINCE)")
    return capture_file(capture_folder, client), parse_since(since, now) if since else None


def capture_file(folder: Path, client: str) -> Path:
    """The capture file of a client in the capture folder (its name made safe as a file name)."""
    name = quote(client, safe="")
    return folder / f"{'%2E' + name[1:] if name.startswith('.') else name}.jsonl"


def read_examples(path: Path, since: float | None = None) -> list[Example]:
    """The checked examples of a JSONL file (blocking); TrainDataRefused naming bad lines."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise TrainDataRefused(f"{path}: no such file") from None
    except OSError as error:
        raise TrainDataRefused(f"{path}: cannot be read ({error.strerror})") from None
    return check_lines(data.splitlines(), str(path), since)


def write_examples(examples: Iterable[Example], path: Path) -> None:
    """Write examples for the trainer, one `{"line", "messages"}` per line."""
    path.write_bytes(b"".join(example.as_json() + b"\n" for example in examples))
